"""Keys, mask schemes, the authenticated ciphertext envelope and the text codec."""

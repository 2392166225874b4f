"""The mask schemes' one-byte ids on the wire: a scheme's id is its position in SCHEME_IDS.

Append only: every ciphertext already sent carries its scheme's id, so a reordered, renamed or removed
entry would misread it. The schemes themselves are registered in crypson.cipher.masks, in this order
(tested). Nothing is imported here: the config validates `cipher.scheme` against this list without
loading the cipher (or torch), and a stage that only reads the config depends on this file alone.
"""

SCHEME_IDS = ("report", "keyed-timestep", "keyed-gaussian", "keyed-modular")

from crypson.cli import main

main()

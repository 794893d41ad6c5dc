from hospes.cli import main

main()

from flateval.cli import main

main()

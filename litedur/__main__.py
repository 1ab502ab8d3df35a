from litedur.cli import main

main()

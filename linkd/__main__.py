from linkd.cli import main

main()

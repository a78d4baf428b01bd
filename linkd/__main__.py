from linkd.cli.main import main

main()

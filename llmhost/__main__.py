from llmhost.cli.main import main

main()

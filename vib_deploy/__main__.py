from vib_deploy.cli.app import main

main()

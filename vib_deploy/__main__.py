from vib_deploy.cli import main

main()

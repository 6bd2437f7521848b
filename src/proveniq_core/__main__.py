from proveniq_core.cli import main

main()

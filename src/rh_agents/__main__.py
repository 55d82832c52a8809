from rh_agents.cli import main

main()

"""Agent runs: prepare a cell's workspace, run the agent under a sandbox backend with a deadline,
collect ``final_model/`` and write the run record."""

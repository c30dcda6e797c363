"""The contract of the agents' REST API shared by the server (site_agent.api), the CLI, the
sites controller and the agents polling their peers: the typed ``/status`` document
(:mod:`.status`) and the one HTTP client (:mod:`.client`)."""

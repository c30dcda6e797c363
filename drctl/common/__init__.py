"""Rules both programs (drctl and site-agent) apply, written once: JSON merge patch, host:port,
and how a member's role, upstream and lag are read from a cluster view."""

"""The rules of the pure decision, one module per rule of :func:`site_agent.decide.decide`
(the order and the invariant each enforces are in its docstring)."""

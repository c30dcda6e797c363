"""Client routing: production HAProxy and PgBouncer configurations rendered from the topology and the
site's DCS, and a watcher that tells them about a role change at once instead of waiting for the
next health check."""

"""Development stack: start/stop script (`deploy/stack`), readiness probes and idempotent provisioning."""

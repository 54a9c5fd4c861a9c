"""Fleet-wide state shared by ERS replicas on PostgreSQL: breaker overrides, and which
replica runs the fleet's jobs."""

from service.fleet.leader import FleetLeader
from service.fleet.overrides import FleetOverrides

__all__ = ["FleetLeader", "FleetOverrides"]

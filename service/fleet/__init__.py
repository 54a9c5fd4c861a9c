"""Fleet-wide state shared by ERS replicas on PostgreSQL: breaker overrides."""

from service.fleet.overrides import FleetOverrides

__all__ = ["FleetOverrides"]

"""Who is calling: the tenant of the API key, narrowed by an optional on-behalf-of id."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """Every row is owned by one principal; nobody else can see it."""

    tenant: str
    subject: str = ""

    def describe(self) -> str:
        return self.tenant if not self.subject else f"{self.tenant}/{self.subject}"

"""The agents' device rules on PostgreSQL (kept across agent restarts)."""

# SQL text here is assembled only from module constants; every value goes as a $n parameter.

from __future__ import annotations

import json
from collections.abc import Sequence

from monitoring_store.base import (
    DeviceRules,
    dedupe_rules,
)
from monitoring_store.postgres.connection import PgConnection

_RULES_UPSERT = """
INSERT INTO monitoring_device_rules (device_id, owner_id, device_type, config, version, active)
SELECT d, o, t, c::jsonb, v, a
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::boolean[])
    AS u(d, o, t, c, v, a)
ON CONFLICT (device_id) DO UPDATE SET
    owner_id = EXCLUDED.owner_id, device_type = EXCLUDED.device_type, config = EXCLUDED.config,
    version = EXCLUDED.version, active = EXCLUDED.active
WHERE monitoring_device_rules.version <= EXCLUDED.version
"""


class PgDeviceRules(PgConnection):
    """Device rules: ``monitoring_device_rules``, guarded by version."""

    async def upsert_device_rules(self, rules: Sequence[DeviceRules]) -> None:
        latest = {r.device_id: r for r in dedupe_rules(rules)}
        if not latest:
            return
        rows = list(latest.values())
        await self.pool.execute(
            _RULES_UPSERT,
            [r.device_id for r in rows],
            [r.owner_id for r in rows],
            [r.device_type for r in rows],
            [json.dumps(r.config) for r in rows],
            [r.version for r in rows],
            [r.active for r in rows],
        )

    async def load_device_rules(self) -> list[DeviceRules]:
        rows = await self.pool.fetch(
            "SELECT device_id, owner_id, device_type, config, version, active "
            "FROM monitoring_device_rules ORDER BY device_id"
        )
        return [
            DeviceRules(
                device_id=r["device_id"],
                owner_id=r["owner_id"],
                device_type=r["device_type"],
                config=r["config"],
                version=r["version"],
                active=r["active"],
            )
            for r in rows
        ]

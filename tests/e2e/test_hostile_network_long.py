"""The long versions of issue 30's attacks (slow: RESSERVE_SLOW=1, about 6 minutes): the seven
attacks of loadtests/hostile_network.py against this checkout, 512 sockets and 512 gRPC streams
held two minutes each, each attack on a fresh keyed server, and what each must cost at most."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_seven_attacks_held_for_minutes(tmp_path: Path) -> None:
    out = tmp_path / "after.json"
    done = subprocess.run([sys.executable, str(ROOT / "loadtests/hostile_network.py"), "--checkout", str(ROOT),
                           "--hold-s", "120", "--json", str(out)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(out.read_text())
    attacks = {name.split()[0]: result for name, result in found.items() if name != "checkout"}
    assert all(result["server_alive_after"] for result in attacks.values()), attacks
    assert all("error" not in result for result in attacks.values()), attacks

    idle = attacks["1"]
    assert idle["closed_by_server"] == idle["sockets"] == 512
    assert set(idle["probes"]) == {"200"} and sum(idle["probes"].values()) >= 200  # every probe of 2 minutes

    streams = attacks["2"]
    answered, asked = map(int, streams["health_and_live_answered"].split("/"))
    assert answered == asked >= 200
    assert sum(streams["held_calls_ended_by_server"].values()) == 512

    assert attacks["3"]["codes"] == {"UNAUTHENTICATED": 48} and attacks["3"]["rss_growth_mib"] < 150
    assert attacks["4"]["status"] == 413 and attacks["4"]["server_cpu_s"] < 2
    assert attacks["5"]["status"] == 400 and attacks["5"]["answer_s"] < 2
    floods = attacks["6"]
    assert floods["answered_431"] == 4 and floods["rss_growth_mib"] < 50
    assert floods["key_lines_status"] == "431" and set(floods["probes"]) == {"200"}
    bodies = attacks["7"]
    assert bodies["binary"]["rss_growth_mib"] < 1200 and bodies["json"]["rss_growth_mib"] < 1200  # the 1 GiB budget
    assert any(status.startswith("503 server busy") for status in bodies["binary"]["statuses"])

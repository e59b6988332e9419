"""A lab as a lab is set up: a Ray head with its token, a film node and an ML node that share no
folder with the head nor with the trainee's laptop (tests/harness.py), a farm server on the head,
and the CLI on the laptop."""

from __future__ import annotations

import pytest

from tests.harness import Lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    lab = Lab(tmp_path_factory.mktemp("lab"))
    try:
        lab.start_head()
        lab.join("film", "film")
        lab.join("ml", "ml")
        yield lab
    finally:
        lab.close()


def test_nodes_join_with_the_heads_token_and_a_wrong_token_is_refused(lab: Lab) -> None:
    nodes = lab.farm("nodes", "--json")
    assert nodes.returncode == 0, nodes.stderr
    labs = sorted(tuple(n["labs"]) for n in __import__("json").loads(nodes.stdout) if n["alive"])
    assert labs == [(), ("film",), ("ml",)]

    stranger = lab.laptop
    (stranger.path("/tmp/home/ray-token")).write_text("0" * 64)
    refused = stranger.run(
        "farm", "node", "join", "--address", lab.ray_address, "--token-file", "/tmp/home/ray-token"
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: the Ray cluster at {lab.ray_address} refused the token in /tmp/home/ray-token: "
        "use the head node's ~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
    )
    none = stranger.run("farm", "node", "join", "--address", lab.ray_address)
    assert none.returncode == 2
    assert none.stderr.strip().startswith(
        "error: no Ray cluster token at /tmp/home/.ray/auth_token"
    )

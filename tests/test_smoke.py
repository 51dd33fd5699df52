def test_world_builds(world, client):
    r = world.api("GET", "/me", "coordinator")
    assert r.status_code == 200
    assert r.get_json()["roles"] == ["coordinator"]
    assert r.get_json()["sites"] == ["AT01"]

"""tests/kubesim tests kubesim's own API server and controllers: the `cluster` fixture runs them."""
import pytest


@pytest.fixture
def control_plane_kind():
    return "kubesim"

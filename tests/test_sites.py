"""Hook sites: names are built in one place and validated against the model."""

from __future__ import annotations

import pytest

from persona_gate import HookSite, parse_site, resolve, sites_for
from persona_gate.errors import LayerOutOfRangeError, UnknownHookSiteError


def test_names_and_parsing():
    s = HookSite(2, "resid_mid")
    assert s.hook_name == "blocks.2.hook_resid_mid"
    assert parse_site("resid_mid.2") == s
    assert parse_site("blocks.2.hook_resid_mid") == s
    assert parse_site(str(s)) == s


def test_resolve_checks_layer_and_hook(tiny):
    n = tiny.cfg.n_layers
    parallel = "blocks.0.hook_resid_mid" not in tiny.hook_dict  # GPT-NeoX, Falcon: attention and MLP side by side
    for kind in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):
        if kind == "resid_mid" and parallel:
            with pytest.raises(UnknownHookSiteError, match="pick another site kind"):
                resolve(HookSite(n - 1, kind), tiny)
            continue
        assert resolve(HookSite(n - 1, kind), tiny) == f"blocks.{n - 1}.hook_{kind}"
    with pytest.raises(LayerOutOfRangeError, match=f"0 .. {n - 1}"):
        resolve(HookSite(n, "resid_pre"), tiny)
    assert [s.layer for s in sites_for(tiny, [-1, 0])] == [n - 1, 0]
    with pytest.raises(LayerOutOfRangeError):
        sites_for(tiny, [n + 5])


@pytest.mark.parametrize("bad", ["resid.1", "blocks.x.hook_resid_pre", "hook_resid_pre", "resid_pre"])
def test_unknown_sites_raise(bad):
    with pytest.raises(UnknownHookSiteError):
        parse_site(bad)


def test_bad_site_construction():
    with pytest.raises(UnknownHookSiteError, match="use one of"):
        HookSite(0, "attn_scores")
    with pytest.raises(LayerOutOfRangeError):
        HookSite(-1)
    # Under pytest the jaxtyping/beartype import hook rejects it first (a TypeError).
    with pytest.raises((LayerOutOfRangeError, TypeError)):
        HookSite("3")  # type: ignore[arg-type]

"""The rollout a fleet card states (``RolloutSpec``): which bridges it selects, and what a
malformed one is refused for. No broker needed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridge.config.fleet import RolloutSpec, selection_bucket
from bridge.config.models import ShadowRuleConfig

SHA = "ab" * 32


def test_fraction_selection_is_deterministic_and_about_the_fraction() -> None:
    spec = RolloutSpec(fraction=0.34)
    chosen = [b for b in (f"bridge-{i}" for i in range(2000)) if spec.selects(b, SHA)]
    assert chosen == [b for b in (f"bridge-{i}" for i in range(2000)) if spec.selects(b, SHA)]
    assert 0.30 < len(chosen) / 2000 < 0.38
    # Another model picks another canary set.
    other = {b for b in (f"bridge-{i}" for i in range(2000)) if spec.selects(b, "cd" * 32)}
    assert other != set(chosen)
    assert 0 <= selection_bucket("b1", SHA) < 1


def test_names_fraction_and_everyone() -> None:
    assert RolloutSpec().selects("anyone", SHA)  # no names, no fraction: every bridge
    named = RolloutSpec(bridges=["b1"])
    assert named.selects("b1", SHA) and not named.selects("b2", SHA)
    both = RolloutSpec(bridges=["b1"], fraction=1.0)
    assert both.selects("b2", SHA)  # either selects


def test_rule_overrides_the_bridges_rule_and_is_checked() -> None:
    spec = RolloutSpec(shadow=True, rule={"period_s": 5, "min_windows": 3})
    rule = spec.shadow_rule(ShadowRuleConfig(max_far=0.02))
    assert (rule.period_s, rule.min_windows, rule.max_far) == (5.0, 3, 0.02)
    with pytest.raises(ValidationError):
        RolloutSpec(shadow=True, rule={"period": 5})  # unknown key
    with pytest.raises(ValidationError):
        RolloutSpec(rule={"period_s": 5})  # a rule without --shadow
    with pytest.raises(ValidationError):
        RolloutSpec(bridges=["a/b"])  # not one topic level
    with pytest.raises(ValidationError):
        RolloutSpec.model_validate({"fraction": 1.5})
    with pytest.raises(ValidationError):
        RolloutSpec(shadow=True, rule={"max_far": 2}).shadow_rule(ShadowRuleConfig())

"""ACL policies: parsing, Vault's precedence, merging, parameters, wrapping.

Expected answers follow Vault's documented examples and OpenBao's
``internal/vault/policy`` behaviour."""

from __future__ import annotations

import pytest

from vaultd.core.acl import ACL, PolicyError, parse_policy


def acl(*texts: str) -> ACL:
    return ACL(parse_policy(f"p{i}", text) for i, text in enumerate(texts))


def caps(policy: ACL, path: str) -> list[str]:
    return policy.capabilities(path)


def test_exact_beats_prefix_and_longer_prefix_beats_shorter() -> None:
    a = acl(
        """
        path "secret/*"        { capabilities = ["read"] }
        path "secret/app/*"    { capabilities = ["read", "list"] }
        path "secret/app/key"  { capabilities = ["update"] }
        """
    )
    assert caps(a, "secret/x") == ["read"]
    assert caps(a, "secret/app/x") == ["read", "list"]
    assert caps(a, "secret/app/key") == ["update"]
    assert caps(a, "other") == ["deny"]


@pytest.mark.parametrize(
    ("winner", "loser", "path"),
    [
        ("foo/a*", "foo/+", "foo/abc"),  # the first wildcard comes later
        ("foo/bar/+/baz", "foo/+/bar/baz", "foo/bar/bar/baz"),
        ("foo/+/bar", "foo/+/ba*", "foo/x/bar"),  # not a prefix beats a prefix
        ("foo/+", "foo/*", "foo/x"),
        ("foo/+/bar/ba*", "foo/+/bar/b*", "foo/x/bar/baz"),  # longer wins
        ("foo/bar/+/baz", "foo/+/+/baz", "foo/bar/x/baz"),
    ],
)
def test_wildcard_priority(winner: str, loser: str, path: str) -> None:
    for order in ((winner, loser), (loser, winner)):
        a = acl(
            f'path "{order[0]}" {{ capabilities = ["{"read" if order[0] == winner else "list"}"] }}\n'
            f'path "{order[1]}" {{ capabilities = ["{"read" if order[1] == winner else "list"}"] }}\n'
        )
        assert caps(a, path) == ["read"], (order, path)


def test_plus_matches_exactly_one_segment() -> None:
    a = acl('path "secret/+/config" { capabilities = ["read"] }')
    assert caps(a, "secret/app/config") == ["read"]
    assert caps(a, "secret/config") == ["deny"]
    assert caps(a, "secret/a/b/config") == ["deny"]
    assert caps(a, "secret/app/config/more") == ["deny"]


def test_deny_in_any_policy_wins_on_the_same_pattern() -> None:
    a = acl('path "secret/*" { capabilities = ["read", "update"] }', 'path "secret/*" { capabilities = ["deny"] }')
    assert caps(a, "secret/x") == ["deny"]
    assert not a.check("secret/x", "read").allowed
    # A more specific pattern elsewhere is still more specific.
    b = acl('path "secret/*" { capabilities = ["deny"] }', 'path "secret/ok" { capabilities = ["read"] }')
    assert caps(b, "secret/ok") == ["read"]


def test_same_pattern_in_several_policies_adds_up() -> None:
    a = acl('path "kv/*" { capabilities = ["read"] }', 'path "kv/*" { capabilities = ["list"] }')
    assert caps(a, "kv/a") == ["read", "list"]


def test_list_of_a_folder_finds_the_rule_without_its_slash() -> None:
    a = acl('path "kv/metadata/app" { capabilities = ["list"] }')
    assert a.check("kv/metadata/app/", "list").allowed
    assert not a.check("kv/metadata/app/", "read").allowed


def test_sudo_is_reported() -> None:
    a = acl('path "sys/audit" { capabilities = ["read", "sudo"] }')
    decision = a.check("sys/audit", "read")
    assert decision.allowed and decision.sudo
    assert caps(a, "sys/audit") == ["sudo", "read"]


def test_root_policy_allows_everything() -> None:
    from vaultd.core.acl import Policy

    a = ACL([Policy("root", "", ())])
    assert caps(a, "anything") == ["root"]
    assert a.check("sys/seal", "update").sudo


def test_old_style_policy_words() -> None:
    a = acl('path "a/*" { policy = "write" }', 'path "b/*" { policy = "read" }')
    assert caps(a, "a/x") == ["read", "list", "update", "delete", "create"]
    assert caps(a, "b/x") == ["read", "list"]


def test_json_policy() -> None:
    a = acl('{"path": {"secret/*": {"capabilities": ["read"]}, "secret/x": {"capabilities": ["deny"]}}}')
    assert caps(a, "secret/y") == ["read"]
    assert caps(a, "secret/x") == ["deny"]


def test_allowed_denied_and_required_parameters() -> None:
    a = acl(
        """
        path "kv/app" {
          capabilities = ["create", "update"]
          allowed_parameters = {
            "color" = ["red", "gr*"]
            "size"  = []
          }
          denied_parameters = {
            "color" = ["green"]
          }
        }
        path "kv/req" {
          capabilities = ["update"]
          required_parameters = ["owner"]
        }
        path "kv/any" {
          capabilities = ["update"]
          allowed_parameters = { "*" = [] }
          denied_parameters = { "secret" = [] }
        }
        """
    )
    ok = lambda path, data: a.check(path, "update", data=data).allowed  # noqa: E731
    assert ok("kv/app", {"color": "red", "size": 3})
    assert ok("kv/app", {"color": "grey"})
    assert not ok("kv/app", {"color": "green"})  # denied beats the allowed glob
    assert not ok("kv/app", {"color": "blue"})
    assert not ok("kv/app", {"shape": "round"})  # not in allowed_parameters
    assert ok("kv/app", {})
    assert ok("kv/req", {"owner": "me"})
    assert not ok("kv/req", {"other": 1})
    assert ok("kv/any", {"x": 1, "y": 2})
    assert not ok("kv/any", {"secret": "s"})
    # Parameter names are case-insensitive, as in Vault.
    assert not ok("kv/app", {"COLOR": "green"})


def test_wrapping_ttl_bounds() -> None:
    a = acl('path "kv/w" { capabilities = ["read"]\n min_wrapping_ttl = "1m"\n max_wrapping_ttl = "1h" }')
    assert not a.check("kv/w", "read").allowed  # must be wrapped
    assert not a.check("kv/w", "read", wrap_ttl=30).allowed
    assert a.check("kv/w", "read", wrap_ttl=300).allowed
    assert not a.check("kv/w", "read", wrap_ttl=7200).allowed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('path "a" {\n  capabilities = ["read", "fly"]\n}', 'invalid capability "fly"'),
        ('path "a" {\n  capabilitiez = ["read"]\n}', "line 2: path \"a\": invalid key 'capabilitiez'"),
        ('paths "a" { capabilities = ["read"] }', "invalid key 'paths'"),
        ('path "a/+*" { capabilities = ["read"] }', "'+*' is forbidden"),
        ('path "a" { policy = "superuser" }', 'invalid policy "superuser"'),
        ('path "a" {\n capabilities = ["read"]\n min_wrapping_ttl = "2h"\n max_wrapping_ttl = "1h" }',
         "max_wrapping_ttl cannot be less than min_wrapping_ttl"),
        ('path "a" { capabilities = ["read"]\n max_wrapping_ttl = "soon" }', "error parsing max_wrapping_ttl"),
        ('path "a" { capabilities = "read" }', "capabilities must be a list"),
        ('path "a" {\n capabilities = ["read"]\n', "failed to parse policy"),
        ('{"path": 3}', "must be a block"),
    ],
)
def test_bad_policies_are_named(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy("bad", text)
    assert message in str(info.value)


def test_templated_paths_are_ignored() -> None:
    a = acl('path "identity/entity/id/{{identity.entity.id}}" { capabilities = ["read"] }')
    assert caps(a, "identity/entity/id/{{identity.entity.id}}") == ["deny"]


@pytest.mark.parametrize(
    ("rule", "mount", "expected"),
    [
        ('path "secret/data/app/*" { capabilities = ["read"] }', "secret/", True),
        ('path "secret/*" { capabilities = ["read"] }', "secret/", True),
        ('path "secret/data/x" { capabilities = ["deny"] }', "secret/", False),
        ('path "other/*" { capabilities = ["read"] }', "secret/", False),
        ('path "+/data/*" { capabilities = ["read"] }', "secret/", True),
        ('path "sec+/x" { capabilities = ["read"] }', "secret/", False),
        ('path "kv/+/app" { capabilities = ["read"] }', "kv/", True),
    ],
)
def test_mount_access(rule: str, mount: str, expected: bool) -> None:
    assert acl(rule).has_mount_access(mount) is expected

"""Certificate principal mapping rules: the name a verified client certificate gives its principal.

Kafka's `ssl.principal.mapping.rules` (KIP-371), extended to the certificate's subject alternative
names (SANs), where workload identities such as SPIFFE IDs live. Rules are tried in order; the first
that applies names the principal ``User:<name>``:

- ``DEFAULT``: the subject's common name (CN), Raftka's mapping when no rule is given. Kafka's
  ``DEFAULT`` is the whole DN instead, which ``RULE:(.*)/$1/`` gives here.
- ``RULE:pattern/replacement/[L|U]``: Kafka's rule, against the subject DN in RFC 2253 form, as gRPC
  reports it: most specific attribute first, ``,+"\\<>;`` escaped with a backslash
  (``CN=alice,OU=Payments,O=Acme\\, Inc,C=US``).
- ``SAN:<TYPE>:pattern/replacement/[L|U]``, TYPE one of URI, DNS, EMAIL, IP: against each SAN of that
  type, in the certificate's order; the first that matches applies.

The pattern is a Python regular expression that must match the whole value (Kafka's `matches()`). The
replacement is the name: ``$n`` stands for the pattern's group n (``$0`` the whole value; as in Java,
further digits join the number while it stays a group of the pattern), ``\\`` takes the next
character literally; a ``/`` in the pattern or the replacement is written ``\\/``. ``L`` lowercases,
``U`` uppercases the result. A rule whose result is empty does not apply, so a name is never empty.

`parse_rules` reads Kafka's list syntax: rules separated by commas or newlines (a pattern's commas
belong to it, as the slashes delimit it). A malformed rule, a bad pattern, or a replacement naming a
group the pattern lacks raises ValueError naming the rule, so a broker refuses to start on it rather
than on the first certificate it meets. This module is pure: `raftka.cluster.principal` reads the
values out of gRPC's auth context and turns "no rule applies" into a refused call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

SAN_TYPES = ("URI", "DNS", "EMAIL", "IP")
SOURCES = ("DN", "CN", *SAN_TYPES)
"""What a rule reads: the subject DN (RFC 2253), its common name, or the SANs of one type."""

Names = Mapping[str, Sequence[str]]
"""A verified certificate's values by source (`SOURCES`); a source the certificate lacks may be absent."""

_RULE = re.compile(r"(?P<default>DEFAULT)|(?:RULE:|SAN:(?P<san>[A-Za-z]*):)"
                   r"(?P<pattern>(?:\\.|[^\\/])*)/(?P<replacement>(?:\\.|[^\\/])*)/(?P<case>[LU]?)")
_END = re.compile(r"[ \t\r]*(?:[,\n]|$)")
_SEPARATORS = " \t\r\n,"
_SYNTAX = "DEFAULT, RULE:pattern/replacement/[L|U] or SAN:URI|DNS|EMAIL|IP:pattern/replacement/[L|U]"


@dataclass(frozen=True)
class PrincipalRule:
    text: str
    """The rule as written, for messages and the broker's log."""
    source: str
    """Which values it reads (`SOURCES`)."""
    pattern: re.Pattern[str] | None = None
    """None for DEFAULT: the value itself is the name."""
    replacement: tuple[str | int, ...] = ()
    """Literal text and group numbers."""
    case: str = ""
    """"L", "U" or ""."""

    def apply(self, names: Names) -> str | None:
        """The name the first of the rule's values maps to, None when the rule does not apply."""
        for value in names.get(self.source, ()):
            name = self._name(value)
            if name:
                return name
        return None

    def _name(self, value: str) -> str | None:
        if self.pattern is None:
            return value
        match = self.pattern.fullmatch(value)
        if match is None:
            return None
        name = "".join(part if isinstance(part, str) else match.group(part) or "" for part in self.replacement)
        return name.lower() if self.case == "L" else name.upper() if self.case == "U" else name


DEFAULT_RULES = (PrincipalRule("DEFAULT", "CN"),)
"""What applies when no rule is given: the CN, as before rules existed."""


def principal_name(rules: Sequence[PrincipalRule], names: Names) -> str | None:
    """The name the first rule that applies gives; None when none does."""
    return next((name for rule in rules if (name := rule.apply(names)) is not None), None)


def parse_rules(text: str) -> tuple[PrincipalRule, ...]:
    """The rules of `text`, separated by commas or newlines; raises ValueError naming a bad one."""
    rules: list[PrincipalRule] = []
    position = _skip_separators(text, 0)
    while position < len(text):
        match = _RULE.match(text, position)
        end = _END.match(text, match.end()) if match else None
        if match is None or end is None:
            raise ValueError(f"principal mapping rule {text[position:].strip()!r} is not {_SYNTAX}")
        rules.append(_rule(match))
        position = _skip_separators(text, end.end())
    return tuple(rules)


def _skip_separators(text: str, position: int) -> int:
    """Where the next rule starts: empty items between separators are skipped, as Kafka does."""
    return len(text) - len(text[position:].lstrip(_SEPARATORS))


def _rule(match: re.Match[str]) -> PrincipalRule:
    text = match.group(0)
    if match.group("default"):
        return DEFAULT_RULES[0]
    san = match.group("san")
    if san is not None and san not in SAN_TYPES:
        raise ValueError(f"principal mapping rule {text!r}: unknown SAN type {san!r}, expected one of "
                         f"{', '.join(SAN_TYPES)}")
    try:
        pattern = re.compile(match.group("pattern"))
    except re.error as exc:
        raise ValueError(f"principal mapping rule {text!r}: bad pattern: {exc}") from None
    replacement = _replacement(match.group("replacement"), pattern.groups, text)
    return PrincipalRule(text, san or "DN", pattern, replacement, match.group("case"))


def _replacement(text: str, groups: int, rule: str) -> tuple[str | int, ...]:
    """`text` as literal parts and group numbers (Java's `$n` and `\\` escapes; the rule's syntax already
    gives every backslash a character to escape)."""
    parts: list[str | int] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            parts.append(text[index + 1])
            index += 2
        elif char == "$":
            digits = re.match(r"[0-9]+", text[index + 1:])
            if digits is None:
                raise ValueError(f"principal mapping rule {rule!r}: '$' must be followed by a group number "
                                 "(write \\$ for a dollar sign)")
            number, used = int(digits.group()[0]), 1
            for digit in digits.group()[1:]:
                if number * 10 + int(digit) > groups:
                    break
                number, used = number * 10 + int(digit), used + 1
            if number > groups:
                raise ValueError(f"principal mapping rule {rule!r}: the replacement uses group ${number} but the "
                                 f"pattern has {groups} group{'s' if groups != 1 else ''}")
            parts.append(number)
            index += 1 + used
        else:
            parts.append(char)
            index += 1
    return tuple(parts)

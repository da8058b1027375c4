"""Evaluates Kubernetes NetworkPolicies the way the API defines them, for the rendered manifests.

A pod selected by no policy of a direction is open in that direction; once any policy of that
direction selects it, only what some rule of those policies allows gets through. A connection
between two pods needs the sender's egress and the receiver's ingress. ipBlock peers are applied
to addresses outside the cluster only (what they mean for pod addresses is left to the network
plugin, and these manifests never rely on it).
"""

import ipaddress
from dataclasses import dataclass, field
from typing import Any

Labels = dict[str, str]


def selects(selector: dict[str, Any] | None, labels: Labels) -> bool:
    """A LabelSelector; an empty one selects everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace and labels) or an address outside the cluster."""

    namespace: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    namespace_labels: tuple[tuple[str, str], ...] = ()
    address: str = ""

    @classmethod
    def pod(cls, namespace: str, labels: Labels, namespace_labels: Labels | None = None) -> "Endpoint":
        ns_labels = {"kubernetes.io/metadata.name": namespace, **(namespace_labels or {})}
        return cls(namespace, tuple(sorted(labels.items())), tuple(sorted(ns_labels.items())))

    @classmethod
    def external(cls, address: str) -> "Endpoint":
        return cls(address=address)


@dataclass
class Policies:
    namespace: str
    policies: list[dict[str, Any]] = field(default_factory=list)

    def _selecting(self, pod: Endpoint, direction: str) -> list[dict[str, Any]]:
        if pod.address or pod.namespace != self.namespace:
            return []
        found = []
        for policy in self.policies:
            spec = policy["spec"]
            types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
            if direction in types and selects(spec.get("podSelector"), dict(pod.labels)):
                found.append(policy)
        return found

    def _peer_matches(self, peer: dict[str, Any], other: Endpoint) -> bool:
        if "ipBlock" in peer:
            if not other.address:
                return False
            address = ipaddress.ip_address(other.address)
            block = peer["ipBlock"]
            return address in ipaddress.ip_network(block["cidr"]) and not any(
                address in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
            )
        if other.address:
            return False
        if "namespaceSelector" in peer:
            if not selects(peer["namespaceSelector"], dict(other.namespace_labels)):
                return False
        elif other.namespace != self.namespace:
            return False
        return selects(peer.get("podSelector"), dict(other.labels))

    @staticmethod
    def _port_matches(rule_ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
        if not rule_ports:
            return True
        for entry in rule_ports:
            if entry.get("protocol", "TCP") != protocol:
                continue
            if "port" not in entry:
                return True
            assert isinstance(entry["port"], int), "named ports are not evaluated here"
            if entry["port"] <= port <= entry.get("endPort", entry["port"]):
                return True
        return False

    def _allows(self, pod: Endpoint, other: Endpoint, port: int, protocol: str, direction: str) -> bool:
        policies = self._selecting(pod, direction)
        if not policies:
            return True
        rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
        for policy in policies:
            for rule in policy["spec"].get(rules_key) or []:
                peers = rule.get(peers_key)
                if not self._port_matches(rule.get("ports"), port, protocol):
                    continue
                if not peers or any(self._peer_matches(peer, other) for peer in peers):
                    return True
        return False

    def can_send(self, source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """The sender's side alone: its egress policies let the connection out."""
        return self._allows(source, target, port, protocol, "Egress")

    def can_connect(self, source: Endpoint, target: Endpoint, port: int, protocol: str = "TCP") -> bool:
        return self.can_send(source, target, port, protocol) and self._allows(
            target, source, port, protocol, "Ingress"
        )

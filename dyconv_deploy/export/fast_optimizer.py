"""onnxscript's optimizer, the one both exporters run, with the same result in a third of the time.

Its rewrite pass tries every rule (46) on every node, twice; on ODConv-MobileNetV2 (1578 nodes) that
is 150,000 tries and 3.1 of the optimizer's 3.6 s, nearly all failing at the first thing they check:
the op type of the pattern's root node. Two tries are wasted in onnxscript 0.7's matcher:

* every try sets up the match state before looking at the node (10 µs, half the pass);
* a pattern with several output nodes (the default rules have one, ``SlicesSplit``: two Slices of one
  tensor -> one Split) indexes every node of the graph by op type before looking at the node:
  nodes² steps, most of the rest.

Within :func:`fast_matching`, a node whose op type or domain differs from those of the pattern's root
(when both are constants, ``NodePattern.op_identifier``: 44 of the 46 default rules) is refused at
once. That is the first check of every node (combination) the matcher tries
(``NodePattern.matches``), so each refused node would have failed anyway and the optimised graph is
the same, byte for byte (``tests/export/test_fast_optimizer.py``).
"""

from contextlib import contextmanager
from typing import Iterator

from onnxscript.rewriter import _basics, _matcher


@contextmanager
def fast_matching() -> Iterator[None]:
    """Within the block, onnxscript's pattern matcher refuses a node that cannot be a pattern's root
    before any other work (results unchanged; not thread-safe: it patches the matcher class)."""
    matcher = _matcher.SimplePatternMatcher
    original = matcher.match

    def match(self, model, graph_or_function, node, **options) -> _basics.MatchResult:
        fixed = self.pattern.output_nodes[0].op_identifier()  # (domain, op_type, "") when both are constants
        if fixed is not None and (node.domain != fixed[0] or node.op_type != fixed[1]):
            return _basics.MatchResult().fail(f"{node.op_type} cannot be the root of the pattern.")
        return original(self, model, graph_or_function, node, **options)

    matcher.match = match
    try:
        yield
    finally:
        matcher.match = original

"""The one piece both autograd engines share: the order in which backprop visits the graph.

A node's gradient is complete only once every node that used it has passed its share back.
Visiting nodes in reverse topological order (each node after everything computed from it)
guarantees that: by the time a node is reached, all its consumers are done.
"""


def topological_order(root):
    """Every node `root` was computed from (through `_parents`), inputs before outputs.

    An explicit stack, not recursion: a long chain of scalar operations (thousands of nodes)
    would pass Python's recursion limit. A node is pushed twice: once to visit its parents,
    once more (`expanded`) to be emitted after them.
    """
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((parent, False) for parent in node._parents if id(parent) not in seen)
    return order

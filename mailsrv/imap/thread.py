"""
THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 3), step by step,
over the L{mailsrv.imap.sort.Record}s of the messages that matched.

Nothing here recurses: a thread may be tens of thousands of messages
deep (a long reply chain), so trees are walked with explicit lists.
Siblings are ordered by sent date, then sequence number (RFC 5256 2.2).
"""

import operator

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
# The Fields attributes both algorithms read.
COLUMNS = ("date", "thread_id", "thread_refs", "sort_subject", "subject_reply")


class _Node:
    """
    A message in a thread tree, or a dummy (C{record} L{None}) for a
    referenced one. C{key} orders siblings: sent date, then sequence
    number; a dummy's is its first child's, once its children are sorted.
    """

    __slots__ = ("record", "parent", "children", "key")

    def __init__(self, record=None):
        self.parent = None
        self.children = []
        self.place(record)

    def place(self, record):
        self.record = record
        self.key = None if record is None else (record.sent, record.seq)

    def adopt(self, child):
        child.parent = self
        self.children.append(child)

    def leave(self):
        self.parent.children.remove(self)
        self.parent = None

    def would_loop(self, child):
        """
        Whether adopting C{child} makes a loop: C{child} is this node or
        one of its ancestors. Most children have no children of their
        own, which answers it without walking up a long chain.
        """
        if self is child or not child.children:
            return self is child
        node = self.parent
        while node is not None:
            if node is child:
                return True
            node = node.parent
        return False


def thread(algorithm, records):
    """The threads (a list of root L{_Node}s, in order) of C{records} by C{algorithm}."""
    if algorithm == "ORDEREDSUBJECT":
        return ordered_subject(records)
    return references(records)


_key = operator.attrgetter("key")


def ordered_subject(records):
    """
    RFC 5256 ORDEREDSUBJECT: messages grouped by base subject; the first
    (by sent date) of each group is the root, the others its children;
    threads ordered by their first message's sent date.
    """
    groups = {}
    for record in sorted(records, key=lambda r: (r.sent, r.seq)):
        groups.setdefault(record.fields.sort_subject or "", []).append(record)
    roots = []
    for members in groups.values():
        root = _Node(members[0])
        for record in members[1:]:
            root.adopt(_Node(record))
        roots.append(root)
    roots.sort(key=_key)
    return roots


def references(records):
    """RFC 5256 REFERENCES, steps 1 to 6."""
    by_id, nodes = {}, []
    for record in records:
        _link(record, by_id, nodes)
    roots = [node for node in nodes if node.parent is None]  # step 2
    roots = _prune(roots)  # step 3
    for root in roots:  # step 4
        if root.record is None:
            root.children.sort(key=_key)
            root.key = root.children[0].key
    roots.sort(key=_key)
    roots = _gather_subjects(roots)  # step 5
    _sort_siblings(roots)  # step 6
    roots.sort(key=_key)
    return roots


def _link(record, by_id, nodes):
    """Step 1: place C{record} in the table of message IDs and link its references."""
    message_id = record.fields.thread_id
    node = by_id.get(message_id) if message_id is not None else None
    if node is None or node.record is not None:  # new, or a duplicate ID: a unique one
        node = _Node(record)
        nodes.append(node)
        if message_id is not None and message_id not in by_id:
            by_id[message_id] = node
    else:
        node.place(record)  # a dummy until now
    previous = None
    for reference in (record.fields.thread_refs or "").split():
        current = by_id.get(reference)
        if current is None:
            current = by_id[reference] = _Node()
            nodes.append(current)
        # (A) link each reference to the one before, keeping existing links
        if previous is not None and current.parent is None and not previous.would_loop(current):
            previous.adopt(current)
        previous = current
    # (B) the last reference is the parent, whatever parent it had
    if node.parent is not None:
        node.leave()
    if previous is not None and not previous.would_loop(node):
        previous.adopt(node)


def _post_order(roots):
    """Every node under C{roots}, each after all of its descendants."""
    order, stack = [], list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    order.reverse()
    return order


def _prune(roots):
    """
    Step 3: dummies without children go; a dummy's children take its
    place, except at the top where a dummy with several children stays.
    """
    for node in _post_order(roots):
        kept = []
        for child in node.children:
            if child.record is None:
                for grandchild in child.children:
                    grandchild.parent = node
                kept.extend(child.children)
            else:
                kept.append(child)
        node.children = kept
    top = []
    for root in roots:
        if root.record is None and len(root.children) < 2:
            for child in root.children:
                child.parent = None
            top.extend(root.children)
        else:
            top.append(root)
    return top


def _thread_subject(node):
    """The base subject of a top-level message, or of a dummy's first child."""
    if node.record is None:
        node = node.children[0]
    return node.record.fields.sort_subject or ""


def _is_reply(node):
    return node.record is not None and bool(node.record.fields.subject_reply)


def _gather_subjects(roots):
    """Step 5: threads at the top with the same base subject are merged."""
    table = {}
    for root in roots:  # (B)
        subject = _thread_subject(root)
        if not subject:
            continue
        found = table.get(subject)
        if found is None or (found.record is not None and (
                root.record is None or (_is_reply(found) and not _is_reply(root)))):
            table[subject] = root
    top = []
    for root in roots:  # (C)
        if root.parent is not None:  # under a dummy made for an earlier root
            continue
        subject = _thread_subject(root)
        found = table.get(subject) if subject else None
        if found is None or found is root:
            top.append(root)
        elif found.record is None and root.record is None:
            for child in root.children:
                found.adopt(child)
        elif found.record is None or (_is_reply(root) and not _is_reply(found)):
            found.adopt(root)
        else:
            dummy = table[subject] = _Node()
            dummy.adopt(found)  # it leaves the top (filtered below)
            dummy.adopt(root)
            top.append(dummy)
    return [root for root in top if root.parent is None]


def _sort_siblings(roots):
    """Step 6: every set of siblings by sent date, the deepest first."""
    for node in _post_order(roots):
        if node.children:
            node.children.sort(key=_key)
            if node.record is None:
                node.key = node.children[0].key


def format_threads(roots, number):
    """
    The THREAD response's data: C{(1 2 (3)(4))(5)}, C{number} giving a
    record's sequence number or UID. A chain of single children is one
    list of numbers; several children are nested lists.
    """
    out = []
    stack = list(reversed(roots))
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
            continue
        node, numbers = item, []
        while True:
            if node.record is not None:
                numbers.append(b"%d" % number(node.record))
            if len(node.children) != 1:
                break
            node = node.children[0]
        out.append(b"(" + b" ".join(numbers))
        if node.children:
            if numbers:
                out.append(b" ")
            stack.append(b")")
            stack.extend(reversed(node.children))
        else:
            out.append(b")")
    return b"".join(out)

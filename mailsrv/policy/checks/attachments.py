"""
[antispam.attachments]: attachments refused by the extension of their
name, of the names inside zip files, or by content type.

The extension is the name's last one, after the trailing dots and spaces
Windows ignores ("invoice.pdf.exe", "invoice.exe . "): a double extension
shows what a reader expects, the last one what Windows runs. Zip files are
listed (their names only: nothing is extracted) by the shared content
analysis (L{mailsrv.policy.hooks.Message.judged}); a zip inside a zip is
not opened.
"""

from mailsrv.policy.hooks import ContentFilter
from mailsrv.policy.verdict import Verdict


def extension(name):
    """The extension of a file name, lower case ("" for none); folders are left out."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].rstrip(" .")
    stem, dot, last = base.rpartition(".")
    return last.strip().lower() if dot and stem else ""


def blocked(content, extensions, content_types):
    """What in C{content} is refused: the names (or types) of the attachments, in order."""
    found = []
    for part in content.parts:
        name = part.filename
        if name and extension(name) in extensions:
            found.append(name)
        found.extend(f"{name or 'zip'}:{member}" for member in part.members
                     if extension(member) in extensions)
        kind = part.content_type
        if not kind.startswith("multipart/") and (
                kind in content_types or kind.partition("/")[0] + "/*" in content_types):
            found.append(f"{name} ({kind})" if name else kind)
    return list(dict.fromkeys(found))


class BlockedAttachments(ContentFilter):
    """
    A body filter: spam when an attachment is refused.

    @param extensions: file name extensions, lower case, without the dot.
    @param content_types: content types, "type/subtype" or "type/*".
    @param action: the L{mailsrv.policy.actions.Action} for what it finds.
    @param subject_prefix: its own Subject mark, or L{None}.
    """

    def __init__(self, extensions, content_types, action, subject_prefix=None):
        self.extensions = frozenset(extensions)
        self.content_types = frozenset(content_types)
        self.action = action
        self.subject_prefix = subject_prefix

    def judge(self, content):
        """The L{Verdict} on a message's L{content.Content}."""
        found = blocked(content, self.extensions, self.content_types)
        if not found:
            return Verdict.found(False)
        return Verdict.found(True, self.action, tuple(f"attachment {what}" for what in found),
                             subject_prefix=self.subject_prefix,
                             refusal=f"Attachment refused: {', '.join(found)}")

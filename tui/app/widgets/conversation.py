"""The Conversation pane: user and assistant messages, notices and the model-load bar."""

from __future__ import annotations

from typing import TypeVar

from textual import events
from textual.containers import VerticalScroll
from textual.widget import Widget

from engine import Attachment, Failed, QueueEvent, SavedMessage
from tui.app.widgets.message import AssistantMessage, FileBlock, LoadBar, Notice, UserMessage

W = TypeVar("W", bound=Widget)


class ConversationPane(VerticalScroll, can_focus=True):
    """Follows the bottom while replies stream, until the user scrolls up (End resumes)."""

    BORDER_TITLE = "Conversation"
    follow = True  # keep the newest text in view

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.replies: dict[int, AssistantMessage] = {}  # ticket id -> a reply being answered
        self._users: dict[int, UserMessage] = {}  # ticket id -> the user message it answers
        self._continued: dict[int, tuple[str, str]] = {}  # a continue's reply: status before

    def keep_up(self) -> None:
        """Scroll to the bottom after the next layout, if following."""
        if self.follow:
            self.call_after_refresh(self.scroll_end, animate=False, immediate=True)

    def _stop_following(self) -> None:
        self.follow = False

    def _resume_if_at_end(self) -> None:
        self.follow = self.scroll_target_y >= self.max_scroll_y

    def action_scroll_up(self) -> None:
        self._stop_following()
        super().action_scroll_up()

    def action_page_up(self) -> None:
        self._stop_following()
        super().action_page_up()

    def action_scroll_home(self) -> None:
        self._stop_following()
        super().action_scroll_home()

    def action_scroll_down(self) -> None:
        super().action_scroll_down()
        self._resume_if_at_end()

    def action_page_down(self) -> None:
        super().action_page_down()
        self._resume_if_at_end()

    def action_scroll_end(self) -> None:
        super().action_scroll_end()
        self.follow = True

    def _on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        self._stop_following()
        super()._on_mouse_scroll_up(event)

    def _on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        super()._on_mouse_scroll_down(event)
        self._resume_if_at_end()

    def add_user(self, text: str, attachments: tuple[Attachment, ...] = ()) -> UserMessage:
        """What the user typed, then each file sent with it (collapsed)."""
        user = self._add(UserMessage(text, attachments))
        for attachment in attachments:
            self._add(FileBlock(attachment))
        return user

    def add_assistant(self, status: str = "pending") -> AssistantMessage:
        reply = AssistantMessage(status)
        reply.set_status(status, "pending" if status == "pending" else "")
        return self._add(reply)

    def add_notice(self, text: str, kind: str = "info") -> Notice:
        return self._add(Notice(text, kind))

    def _add(self, widget: W) -> W:
        self.mount(widget, before=self._load_bar())
        self.keep_up()
        return widget

    _bar: LoadBar | None = None  # the model-load bar, while a load runs

    def _load_bar(self) -> LoadBar | None:
        return self._bar

    def show_load(self, label: str) -> LoadBar:
        if self._bar is None:
            self._bar = LoadBar(label)
            self.mount(self._bar)
            self.keep_up()
        return self._bar

    def hide_load(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:  # after a refresh: the bar may still be mounting
            self.call_after_refresh(bar.remove)

    async def add_history(self, messages: list[SavedMessage]) -> None:
        """A saved conversation's messages (with their files); message i gets index i."""
        for index, message in enumerate(messages):
            if message.role == "user":
                self.add_user(message.text, message.attachments).index = index
            else:
                reply = self.add_assistant("")
                reply.index = index
                await reply.show(message.text, message.stopped, message.metrics)

    def show_message(self, index: int) -> UserMessage | AssistantMessage | None:
        """Scroll message `index` to the top of the view (the end stays unfollowed)."""
        widget = next((w for w in self.messages() if w.index == index), None)
        if widget is not None:
            self.follow = False
            self.call_after_refresh(self.scroll_to_widget, widget, animate=False, top=True)
        return widget

    def add_turn(self, ticket_id: int, user: UserMessage | None, loads: int) -> AssistantMessage:
        """The reply block of a submitted turn, pending behind the replies and `loads` ahead."""
        ahead = len(self.replies) + loads
        self.follow = True
        reply = self.add_assistant("pending" if ahead else "…")
        if ahead:
            reply.set_status(f"pending · {ahead} ahead", "pending")
        self.replies[ticket_id] = reply
        if user is not None:
            self._users[ticket_id] = user
        return reply

    def continue_turn(self, ticket_id: int, reply: AssistantMessage) -> None:
        """A continue: its tokens go on at the end of `reply`, the block they extend."""
        self.follow = True
        self._continued[ticket_id] = (
            reply.status,
            "stopped" if reply.has_class("-stopped") else "",
        )
        reply.set_status("continuing…")
        self.replies[ticket_id] = reply

    def place(self, ticket_id: int, user: int | None, reply: int | None) -> None:
        """A chat turn ended: its blocks take their indices in the conversation."""
        if ticket_id in self._users:
            self._users[ticket_id].index = user
        self.replies[ticket_id].index = reply

    async def draw(self, ticket_id: int, events: list[QueueEvent], finished: bool) -> None:
        """A batch of a turn's events into its reply; once it ends, the ones pending move up."""
        reply = self.replies[ticket_id]
        before = self._continued.get(ticket_id)
        if before is not None and any(isinstance(e, Failed) for e in events):
            events = [e for e in events if not isinstance(e, Failed)]  # a refused continue
            reply.set_status(*before)  # leaves the reply as it was (the screen says why)
        await reply.take(events)
        self.keep_up()
        if finished:
            self._continued.pop(ticket_id, None)
            del self.replies[ticket_id]
            self._users.pop(ticket_id, None)
            for ahead, pending in enumerate(list(self.replies.values())[1:], 1):
                pending.set_status(f"pending · {ahead} ahead", "pending")

    def drop_last_reply(self) -> UserMessage | None:
        """Before answering the last user message again: its reply goes (kept when the chat
        ends with a message never answered, as a resumed one may); returns that message."""
        users, last = self.query(UserMessage), self.last_reply()
        blocks = list(self.children)
        if last is not None and (not users or blocks.index(last) > blocks.index(users.last())):
            last.remove()
        return users.last() if users else None

    def held(self, length: int, users_only: bool = False) -> list[tuple[int, str]]:
        """(index, text) of the blocks of messages[:length] (users_only: the user's)."""
        return [
            (w.index, w.text)
            for w in self.messages()
            if w.index is not None
            and w.index < length
            and (isinstance(w, UserMessage) or not users_only)
        ]

    def user_at(self, index: int) -> UserMessage | None:
        return next((w for w in self.query(UserMessage) if w.index == index), None)

    def show_subtitle(self, *parts: str) -> None:
        subtitle = " · ".join(p for p in parts if p)
        if subtitle != self.border_subtitle:  # a border repaint is not free
            self.border_subtitle = subtitle

    def messages(self) -> list[UserMessage | AssistantMessage]:
        """The user and assistant blocks, in order."""
        return [w for w in self.children if isinstance(w, UserMessage | AssistantMessage)]

    def mark_context(self, context_start: int, pinned: set[int]) -> tuple[int, int]:
        """Dim the messages trimming took out of the context and mark the pinned ones; returns
        the dropped (messages, user turns)."""
        messages = turns = 0
        for widget in self.messages():
            i = widget.index
            dropped = i is not None and i < context_start and i not in pinned
            widget.set_context(dropped, i in pinned)
            messages += dropped
            turns += dropped and isinstance(widget, UserMessage)
        return messages, turns

    async def remove_from(self, widget: Widget) -> None:
        """Remove `widget` and everything after it (an edited message and its old replies)."""
        children = list(self.children)
        later = [w for w in children[children.index(widget) :] if w is not self._bar]
        await self.remove_children(later)

    def replies_shown(self) -> list[AssistantMessage]:
        return list(self.query(AssistantMessage))

    def last_reply(self) -> AssistantMessage | None:
        replies = self.query(AssistantMessage)
        return replies.last() if replies else None

    async def clear_messages(self) -> None:
        self.replies.clear()
        self._users.clear()
        bar, self._bar = self._bar, None
        await self.remove_children()
        if bar is not None:  # a load still running keeps its progress bar
            self._bar = LoadBar(bar.label)
            self.mount(self._bar)

//! The session's side of the protocol: decoding a client frame, answering at
//! once what needs nothing but the session (ping, refresh, refusals), and
//! turning what waits on the hub or the broker (join, subscribe, unsubscribe,
//! publish) into the session's pending future. [`Done`] is what such a future
//! resolves to; `settle` applies it to the session's state and `apply` also
//! answers the client.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message;

use super::{Flow, Pending, ResumeAt, Session, Wire};
use crate::broker::{BrokerError, Published};
use crate::continuity::{Resume, Stored};
use crate::hub::{EVENT_ENVELOPE, Joined};
use crate::presence::Presence;
use crate::protocol::{
    Channel, ClientFrame, Disconnect, ErrorCode, Event, PayloadError, PresenceInfo, Publication,
    RequestId, Resumed, RoomName, ServerFrame, Since, decode_client_frame, encode_server_frame,
    inspect,
};

/// The outcome of a pending command.
pub(super) enum Done {
    /// The user channel was joined at connect (or not), and both it and
    /// `broadcast` resumed.
    Joined {
        user: Result<(Joined, Resume), BrokerError>,
        broadcast: Resume,
    },
    /// A room was joined (or not) and resumed.
    Subscribed {
        room: RoomName,
        id: Option<RequestId>,
        result: Result<(Joined, Resume), BrokerError>,
    },
    /// A room was left.
    Unsubscribed { id: Option<RequestId> },
    /// A presence query was answered (or not).
    Presence {
        id: Option<RequestId>,
        result: Result<PresenceInfo, BrokerError>,
    },
    /// A publication was handed to the broker (or not).
    Published {
        id: Option<RequestId>,
        result: Result<Published, BrokerError>,
    },
}

impl<W: Wire> Session<W> {
    /// Joins the user channel and resumes it and `broadcast` (both held in
    /// the outbox since registration); `welcome` follows once it is live.
    pub(super) fn join(&self, at: ResumeAt) -> Pending {
        let (hub, id, me) = (self.node.hub.clone(), self.id, self.me.clone());
        let channel = Channel::User(self.user.clone());
        Box::pin(async move {
            let user = hub.join(&channel, id, me, at.user.as_ref()).await;
            let broadcast = hub.resume(&Channel::Broadcast, at.broadcast.as_ref()).await;
            Done::Joined { user, broadcast }
        })
    }

    /// Records what a finished command changed, without answering.
    pub(super) fn settle(&mut self, done: &Done) {
        match done {
            Done::Joined { user: Ok(_), .. } => self.user_joined = true,
            Done::Subscribed {
                room,
                result: Ok(_),
                ..
            } if !self.rooms.contains(room) => {
                // Exactly: most sockets join one or two rooms.
                self.rooms.reserve_exact(1);
                self.rooms.push(room.clone());
            }
            _ => {}
        }
    }

    /// Applies a finished command and answers the client.
    pub(super) fn apply(&mut self, done: Done) -> Flow {
        self.settle(&done);
        match done {
            Done::Joined {
                user: Ok((_, user)),
                broadcast,
            } => {
                let welcome = ServerFrame::Welcome {
                    conn: format!("{:x}", self.id),
                    user: self.user.clone(),
                    node: self.node.id.clone(),
                    heartbeat: self.node.config.websocket.heartbeat_seconds,
                    user_channel: user.resumed.clone(),
                    broadcast: broadcast.resumed.clone(),
                };
                let user_channel = Channel::User(self.user.clone());
                self.release(&user_channel, Some(welcome), user);
                self.release(&Channel::Broadcast, None, broadcast);
                Flow::Continue
            }
            Done::Joined { user: Err(e), .. } => {
                tracing::warn!(error = %e, "user channel subscribe failed; closing socket");
                Flow::Close(Disconnect::Internal)
            }
            Done::Subscribed { room, id, result } => {
                let channel = Channel::Room(room);
                match result {
                    Ok((_, resume)) => {
                        let reply = ServerFrame::Subscribed {
                            id,
                            resumed: resume.resumed.clone(),
                        };
                        self.release(&channel, Some(reply), resume);
                        Flow::Continue
                    }
                    Err(e) => {
                        self.me.outbox.release(&channel, Vec::new(), None);
                        self.error(id, broker_error_code(&e), &e.to_string())
                    }
                }
            }
            Done::Unsubscribed { id } => self.reply(ServerFrame::Ok { id }),
            Done::Presence { id, result } => match result {
                Ok(presence) => self.reply(ServerFrame::Presence { id, presence }),
                Err(e) => self.error(id, broker_error_code(&e), &e.to_string()),
            },
            Done::Published { id, result } => match result {
                Ok(published) => {
                    self.node
                        .metrics
                        .publications_in
                        .with_label_values(&["client"])
                        .inc();
                    self.reply(ServerFrame::Published {
                        id,
                        offset: published.offset,
                    })
                }
                Err(e) => {
                    self.node.metrics.broker_publish_errors.inc();
                    self.error(id, broker_error_code(&e), &e.to_string())
                }
            },
        }
    }

    /// Ends the hold on `channel`: the reply (if any), the replay, then the
    /// live events the resume did not cover.
    fn release(&self, channel: &Channel, reply: Option<ServerFrame>, resume: Resume) {
        let format = self.me.format;
        let limit = self
            .node
            .config
            .websocket
            .outbox_max_bytes
            .saturating_sub(EVENT_ENVELOPE);
        let mut front: Vec<_> = reply
            .iter()
            .map(|frame| encode_server_frame(format, frame))
            .collect();
        front.extend(
            resume
                .replay
                .into_iter()
                .filter_map(|Stored { offset, data }| {
                    let mut p = Publication::new(channel.clone(), data);
                    p.offset = Some(offset);
                    // The same normalisation live events get; one too large for the
                    // queue is skipped here as it would have been dropped live.
                    Event::new(p, limit).ok().map(|e| e.message(format).clone())
                }),
        );
        self.me.outbox.release(channel, front, resume.after);
    }

    /// Handles one data frame (text = JSON, binary = MessagePack).
    pub(super) fn on_frame(&mut self, payload: &[u8], binary: bool) -> Flow {
        let frame = match decode_client_frame(payload, binary) {
            Ok(frame) => frame,
            Err(e) => {
                self.node
                    .metrics
                    .frames_in
                    .with_label_values(&["invalid"])
                    .inc();
                self.bad_frames += 1;
                if self.bad_frames >= self.node.config.websocket.max_bad_frames {
                    return Flow::Close(Disconnect::PolicyViolation);
                }
                return self.error(e.id, ErrorCode::BadFrame, &e.message);
            }
        };
        let kind = match &frame {
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Unsubscribe { .. } => "unsubscribe",
            ClientFrame::Publish { .. } => "publish",
            ClientFrame::Refresh { .. } => "refresh",
            ClientFrame::Ping { .. } => "ping",
            ClientFrame::Presence { .. } => "presence",
        };
        self.node.metrics.frames_in.with_label_values(&[kind]).inc();
        match frame {
            ClientFrame::Subscribe { room, id, since } => self.subscribe(&room, id, since),
            ClientFrame::Unsubscribe { room, id } => self.unsubscribe(&room, id),
            ClientFrame::Publish { room, data, id } => self.publish(&room, data, id),
            ClientFrame::Refresh { token, id } => self.refresh(&token, id),
            ClientFrame::Ping { id } => self.reply(ServerFrame::Pong { id }),
            ClientFrame::Presence { room, id } => self.presence(&room, id),
        }
    }

    fn subscribe(&mut self, room: &str, id: Option<RequestId>, since: Option<Since>) -> Flow {
        let Some(room) = RoomName::parse(room) else {
            return self.error(
                id,
                ErrorCode::BadRoom,
                "room names are 1-128 characters of A-Z a-z 0-9 _ - : . @",
            );
        };
        if !self.rooms_grant.allows(room.as_str()) {
            return self.error(id, ErrorCode::Forbidden, "token does not allow this room");
        }
        let channel = Channel::Room(room.clone());
        if self.rooms.contains(&room) {
            // Already joined: the position it stands at, nothing replayed.
            let position = self.node.hub.position(&channel);
            return self.reply(ServerFrame::Subscribed {
                id,
                resumed: Resumed {
                    position,
                    recovered: None,
                },
            });
        }
        if self.rooms.len() >= self.node.config.limits.max_rooms_per_socket {
            return self.error(id, ErrorCode::TooManyRooms, "room limit per socket reached");
        }
        // Held from before the subscription is live until the reply and the
        // replay are queued: no live event of the room can overtake them.
        self.me.outbox.hold(&channel);
        let (hub, conn, me) = (self.node.hub.clone(), self.id, self.me.clone());
        let (presence, user) = (self.node.presence.clone(), self.user.clone());
        self.pending = Some(Box::pin(async move {
            // Present from the `ok` on: the broker has it before the join
            // begins, so the time the room is held (and its live events
            // counted against the queue) stays the join's alone.
            presence.join(&room, &user).await;
            let result = hub.join(&channel, conn, me, since.as_ref()).await;
            if result.is_err() {
                drop(presence.leave(&room, &user));
            }
            Done::Subscribed { room, id, result }
        }));
        Flow::Continue
    }

    fn presence(&mut self, room: &str, id: Option<RequestId>) -> Flow {
        let Some(room) = RoomName::parse(room) else {
            return self.error(id, ErrorCode::BadRoom, "invalid room name");
        };
        if !self.rooms_grant.allows(room.as_str()) {
            return self.error(id, ErrorCode::Forbidden, "token does not allow this room");
        }
        let presence = self.node.presence.clone();
        self.pending = Some(Box::pin(async move {
            Done::Presence {
                id,
                result: presence.query(&room).await,
            }
        }));
        Flow::Continue
    }

    fn unsubscribe(&mut self, room: &str, id: Option<RequestId>) -> Flow {
        let Some(room) = RoomName::parse(room) else {
            return self.error(id, ErrorCode::BadRoom, "invalid room name");
        };
        let Some(i) = self.rooms.iter().position(|r| *r == room) else {
            return self.reply(ServerFrame::Ok { id });
        };
        self.rooms.swap_remove(i);
        // Gone from presence by the `ok`.
        let left = self.node.presence.leave(&room, &self.user);
        let (hub, conn) = (self.node.hub.clone(), self.id);
        self.pending = Some(Box::pin(async move {
            hub.unsubscribe(&Channel::Room(room), conn).await;
            Presence::sent(left).await;
            Done::Unsubscribed { id }
        }));
        Flow::Continue
    }

    fn publish(&mut self, room: &str, data: Bytes, id: Option<RequestId>) -> Flow {
        let Some(room) = RoomName::parse(room) else {
            return self.error(id, ErrorCode::BadRoom, "invalid room name");
        };
        if !self.publish_grant.allows(room.as_str()) {
            return self.error(
                id,
                ErrorCode::Forbidden,
                "token does not allow publishing to this room",
            );
        }
        // The same check as the HTTP API and the broker's inbound path.
        if let Err(e) = inspect(&data, self.node.config.websocket.max_frame_bytes) {
            let code = match e {
                PayloadError::TooLarge { .. } => ErrorCode::TooLarge,
                PayloadError::NotJson | PayloadError::TooDeep => ErrorCode::BadFrame,
            };
            return self.error(id, code, &e.to_string());
        }
        let published = self.node.broker().publish(Channel::Room(room), data);
        self.pending = Some(Box::pin(async move {
            Done::Published {
                id,
                result: published.await,
            }
        }));
        Flow::Continue
    }

    fn refresh(&mut self, token: &str, id: Option<RequestId>) -> Flow {
        let verified = self
            .node
            .verifier
            .verify_refresh(token, &self.user)
            .and_then(|identity| self.node.revocations.check(&identity).map(|()| identity));
        match verified {
            Err(e) => {
                self.node
                    .metrics
                    .auth_failures
                    .with_label_values(&[e.reason()])
                    .inc();
                let code = if e == crate::auth::AuthError::SubMismatch {
                    ErrorCode::SubMismatch
                } else {
                    ErrorCode::BadToken
                };
                self.error(id, code, e.message())
            }
            Ok(identity) => {
                // Rooms already joined stay joined; the new grants apply to later subscribes.
                self.expires =
                    super::deadline_of(identity.expires_at, self.node.config.auth.leeway_seconds);
                self.node.hub.set_owner(self.id, super::owner_of(&identity));
                self.rooms_grant = identity.rooms;
                self.publish_grant = identity.publish;
                self.reply(ServerFrame::Ok { id })
            }
        }
    }

    /// Queues an `error` frame (counted by code).
    pub(super) fn error(&mut self, id: Option<RequestId>, code: ErrorCode, message: &str) -> Flow {
        self.node
            .metrics
            .errors_sent
            .with_label_values(&[code.code()])
            .inc();
        self.reply(ServerFrame::Error {
            id,
            code,
            message: message.to_string(),
        })
    }

    /// Queues a reply in the socket's format.
    pub(super) fn reply(&mut self, frame: ServerFrame) -> Flow {
        let message: Message = encode_server_frame(self.me.format, &frame);
        self.queue(message)
    }
}

fn broker_error_code(e: &BrokerError) -> ErrorCode {
    match e {
        BrokerError::Overloaded => ErrorCode::Overloaded,
        _ => ErrorCode::BrokerUnavailable,
    }
}

#!lua name=gw
-- The gateway's Redis Function library (contract section 6). Every node
-- loads it into every master with FUNCTION LOAD REPLACE at start-up and
-- after failovers and topology changes; the lines between CONFIG markers
-- are generated from the node's [history] section, so all nodes of one
-- cluster must share it.
--
-- Per channel (the KEY of every function is the channel's name, e.g.
-- gw:room:lobby) two keys, both in the channel's own cluster slot whatever
-- characters the name holds:
--   h|...  a stream: one entry per publication, ID = its offset, fields
--          d (data) and t (ms since the epoch), trimmed by size and age,
--          expiring ttl seconds after the last publication
--   m|...  a hash: e (epoch) and s (top offset), expiring meta_ttl seconds
--          after the last publication or read
-- The published message is "\0h:<offset>:<epoch>:<data>", so that a node
-- splits offset from data without parsing the data.
--
-- Presence (contract section 7), per room, in the room channel's slot too:
--   pu|...         a hash: user -> that user's sockets, over every node
--   pc|...         a string: every socket, over every node
--   pn|...         a hash: node (hex) -> until when (ms) its entries live
--   pz:<node>|...  a hash: user -> that user's sockets on that node
-- so counts are O(1) to read and a node that stops refreshing is pruned by
-- the next call that touches the room. Join and leave are published on the
-- room channel as "\0j:<user>" and "\0l:<user>".

-- CONFIG
-- CONFIG END

local function retention(channel)
  if string.sub(channel, 1, #PREFIX) ~= PREFIX then return nil end
  local rest = string.sub(channel, #PREFIX + 1)
  if rest == 'broadcast' then return ROOM end
  if string.sub(rest, 1, 5) == 'user:' then return USER end
  if string.sub(rest, 1, 5) ~= 'room:' then return nil end
  local room = string.sub(rest, 6)
  for _, rule in ipairs(RULES) do
    local name, prefix = rule[1], rule[2]
    if (prefix and string.sub(room, 1, #name) == name) or (not prefix and room == name) then
      return {rule[3], rule[4]}
    end
  end
  return ROOM
end

-- Redis Cluster's CRC16 (XMODEM) and its inverse over 16 zero bits: with
-- them a suffix can be computed that gives any key the CRC of another.
local function crc16(s)
  local crc = 0
  for i = 1, #s do
    crc = bit.bxor(crc, bit.lshift(string.byte(s, i), 8))
    for _ = 1, 8 do
      if bit.band(crc, 0x8000) ~= 0 then
        crc = bit.band(bit.bxor(bit.lshift(crc, 1), 0x1021), 0xFFFF)
      else
        crc = bit.band(bit.lshift(crc, 1), 0xFFFF)
      end
    end
  end
  return crc
end

local function unshift16(r)
  for _ = 1, 16 do
    local low = bit.band(r, 1)
    if low == 1 then r = bit.bxor(r, 0x1021) end
    r = bit.bor(bit.rshift(r, 1), bit.lshift(low, 15))
  end
  return r
end

-- The key `kind .. "|" .. channel ...` in the channel's slot. A name with a
-- hash tag keeps it (a prefix without braces does not change the tag); a
-- name without one and without `}` is wrapped in one; any other name gets
-- two bytes (no brace among them) that give the key the channel's CRC.
local function key(kind, channel)
  local open = string.find(channel, '{', 1, true)
  if open then
    local close = string.find(channel, '}', open + 1, true)
    if close and close > open + 1 then return kind .. '|' .. channel end
  end
  if not string.find(channel, '}', 1, true) then
    return kind .. '|{' .. channel .. '}'
  end
  local target = crc16(channel)
  for _, sep in ipairs({'|', '#', '~', '!'}) do
    local base = kind .. '|' .. channel .. sep
    local x = bit.bxor(crc16(base), unshift16(target))
    local hi, lo = bit.rshift(x, 8), bit.band(x, 0xFF)
    if hi ~= 123 and hi ~= 125 and lo ~= 123 and lo ~= 125 then
      return base .. string.char(hi, lo)
    end
  end
  error('gw: no key for channel ' .. channel)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function new_epoch()
  local t = redis.call('TIME')
  return string.format('%x%05x', tonumber(t[1]), tonumber(t[2]))
end

-- The channel's epoch and top, creating them when the channel has none
-- (a channel never published to has offset 0 and an epoch already).
local function meta(h, m)
  local epoch = redis.call('HGET', m, 'e')
  local top = tonumber(redis.call('HGET', m, 's') or '0')
  if not epoch then
    epoch = new_epoch()
    top = 0
    -- A stream left behind by lost metadata must not clash with offset 1.
    redis.call('DEL', h)
    redis.call('HSET', m, 'e', epoch, 's', 0)
  end
  redis.call('EXPIRE', m, META_TTL)
  return epoch, top
end

local function gw_publish(keys, args)
  local channel, data = keys[1], args[1]
  local r = retention(channel)
  if not r or r[1] == 0 then
    redis.call(PUBLISH, channel, data)
    return 0
  end
  local h, m = key('h', channel), key('m', channel)
  local epoch = meta(h, m)
  local top = redis.call('HINCRBY', m, 's', 1)
  local now = now_ms()
  redis.call('XADD', h, 'MAXLEN', r[1], tostring(top) .. '-0', 'd', data, 't', now)
  -- Trim by age: the oldest few entries at each publication, enough to
  -- keep up since every publication adds only one.
  local cutoff = now - r[2] * 1000
  local old = redis.call('XRANGE', h, '-', '+', 'COUNT', 4)
  local keep = nil
  for _, entry in ipairs(old) do
    local t = tonumber(entry[2][4])
    if t and t < cutoff then keep = entry[1] end
  end
  if keep then
    local offset = tonumber(string.match(keep, '^(%d+)'))
    redis.call('XTRIM', h, 'MINID', tostring(offset + 1) .. '-0')
  end
  redis.call('EXPIRE', h, r[2])
  redis.call(PUBLISH, channel, '\0h:' .. top .. ':' .. epoch .. ':' .. data)
  return top
end

-- {top, epoch, offset, data, offset, data, ...}: the publications after
-- args[1] (the newest args[2] without it), at most args[2], oldest first,
-- only those younger than the channel's ttl. {} for a channel without history.
local function gw_history(keys, args)
  local channel = keys[1]
  local r = retention(channel)
  if not r or r[1] == 0 then return {} end
  local h, m = key('h', channel), key('m', channel)
  local epoch, top = meta(h, m)
  local limit = tonumber(args[2]) or 0
  local entries = {}
  if limit > 0 then
    if args[1] == '' then
      entries = redis.call('XREVRANGE', h, '+', '-', 'COUNT', limit)
      local n = #entries
      for i = 1, math.floor(n / 2) do
        entries[i], entries[n - i + 1] = entries[n - i + 1], entries[i]
      end
    else
      local since = tonumber(args[1])
      if since and since < top then
        entries = redis.call('XRANGE', h, tostring(since + 1) .. '-0', '+', 'COUNT', limit)
      end
    end
  end
  local cutoff = now_ms() - r[2] * 1000
  local out = {top, epoch}
  for _, entry in ipairs(entries) do
    local t = tonumber(entry[2][4])
    if t and t >= cutoff then
      out[#out + 1] = tonumber(string.match(entry[1], '^(%d+)'))
      out[#out + 1] = entry[2][2]
    end
  end
  return out
end

-- {top, epoch} after starting a new epoch if the history still stands at
-- epoch args[1] below offset args[2] (its top went backwards).
local function gw_epoch(keys, args)
  local channel = keys[1]
  local r = retention(channel)
  if not r or r[1] == 0 then return {} end
  local h, m = key('h', channel), key('m', channel)
  local epoch, top = meta(h, m)
  if epoch == args[1] and top < tonumber(args[2]) then
    epoch = new_epoch()
    redis.call('HSET', m, 'e', epoch)
  end
  return {top, epoch}
end

local function presence_events(channel)
  if string.sub(channel, 1, #PREFIX + 5) ~= PREFIX .. 'room:' then return false end
  local room = string.sub(channel, #PREFIX + 6)
  for _, rule in ipairs(EVENTS) do
    local name, prefix = rule[1], rule[2]
    if (prefix and string.sub(room, 1, #name) == name) or (not prefix and room == name) then
      return true
    end
  end
  return false
end

-- Applies a change in one user's sockets, over every node, to the room's
-- totals; records whether the user joined (first socket) or left (last).
local function tally(p, user, diff, moves)
  if diff == 0 then return end
  local after = redis.call('HINCRBY', p.pu, user, diff)
  local before = after - diff
  if after <= 0 then redis.call('HDEL', p.pu, user) end
  redis.call('INCRBY', p.pc, diff)
  if before <= 0 and after > 0 then
    moves[#moves + 1] = '\0j:' .. user
  elseif before > 0 and after <= 0 then
    moves[#moves + 1] = '\0l:' .. user
  end
end

local function room_keys(channel)
  return {channel = channel, pu = key('pu', channel), pc = key('pc', channel), pn = key('pn', channel)}
end

-- Drops the entries of nodes that stopped refreshing.
local function prune(p, now, moves)
  local nodes = redis.call('HGETALL', p.pn)
  for i = 1, #nodes, 2 do
    if tonumber(nodes[i + 1]) <= now then
      local pz = key('pz:' .. nodes[i], p.channel)
      local entries = redis.call('HGETALL', pz)
      for j = 1, #entries, 2 do
        tally(p, entries[j], -tonumber(entries[j + 1]), moves)
      end
      redis.call('DEL', pz)
      redis.call('HDEL', p.pn, nodes[i])
    end
  end
end

local function announce(p, moves)
  if #moves == 0 or not presence_events(p.channel) then return end
  if redis.call('HLEN', p.pu) > EVENTS_MAX then return end
  for _, move in ipairs(moves) do redis.call(PUBLISH, p.channel, move) end
end

-- One node's changes to a room: args are node (hex), ttl ms, mode ('full':
-- the node's whole state; 'delta': changes) and then user, count pairs.
-- Returns {unknown, users}: unknown = 1 when a delta found no live entries
-- of the node (nothing applied; the node sends its whole state next).
local function gw_presence(keys, args)
  local p = room_keys(keys[1])
  local node, ttl, mode = args[1], tonumber(args[2]), args[3]
  local pz = key('pz:' .. node, p.channel)
  local now = now_ms()
  local moves = {}
  prune(p, now, moves)
  local live = redis.call('HEXISTS', p.pn, node) == 1
  if mode == 'full' then
    local old = {}
    local entries = redis.call('HGETALL', pz)
    for j = 1, #entries, 2 do old[entries[j]] = tonumber(entries[j + 1]) end
    redis.call('DEL', pz)
    for i = 4, #args, 2 do
      local user, n = args[i], tonumber(args[i + 1])
      if n > 0 then
        redis.call('HSET', pz, user, n)
        tally(p, user, n - (old[user] or 0), moves)
        old[user] = nil
      end
    end
    for user, n in pairs(old) do tally(p, user, -n, moves) end
  elseif not live then
    announce(p, moves)
    return {1, redis.call('HLEN', p.pu)}
  else
    for i = 4, #args, 2 do
      local user, d = args[i], tonumber(args[i + 1])
      local c = redis.call('HINCRBY', pz, user, d)
      if c <= 0 then
        redis.call('HDEL', pz, user)
        d = d - c
      end
      tally(p, user, d, moves)
    end
  end
  if redis.call('EXISTS', pz) == 1 then
    redis.call('HSET', p.pn, node, now + ttl)
    redis.call('PEXPIRE', pz, ttl * 2)
  else
    redis.call('HDEL', p.pn, node)
  end
  for _, k in ipairs({p.pu, p.pc, p.pn}) do redis.call('PEXPIRE', k, ttl * 2) end
  announce(p, moves)
  return {0, redis.call('HLEN', p.pu)}
end

-- {users, clients, member, ...}: at most args[1] members, any subset when
-- there are more.
local function gw_presence_get(keys, args)
  local p = room_keys(keys[1])
  local moves = {}
  prune(p, now_ms(), moves)
  announce(p, moves)
  local users = redis.call('HLEN', p.pu)
  local clients = tonumber(redis.call('GET', p.pc) or '0')
  local max = tonumber(args[1]) or 0
  local out = {users, math.max(clients, 0)}
  local members = {}
  if users <= max then
    members = redis.call('HKEYS', p.pu)
  elseif max > 0 then
    -- Any subset will do (contract section 7): a scan from the start costs
    -- O(max), where HRANDFIELD's random picks cost over 1 ms of Redis CPU
    -- on a 50,000-user room.
    local cursor = '0'
    repeat
      local page = redis.call('HSCAN', p.pu, cursor, 'COUNT', max)
      cursor = page[1]
      local kv = page[2]
      for i = 1, #kv, 2 do
        if #members < max then members[#members + 1] = kv[i] end
      end
    until cursor == '0' or #members >= max
  end
  for _, m in ipairs(members) do out[#out + 1] = m end
  return out
end

redis.register_function('gw_presence', gw_presence)
redis.register_function('gw_presence_get', gw_presence_get)
redis.register_function('gw_publish', gw_publish)
redis.register_function('gw_history', gw_history)
redis.register_function('gw_epoch', gw_epoch)

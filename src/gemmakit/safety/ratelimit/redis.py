"""Redis sliding-window store: every replica pointed at the same Redis shares each key's window.

Check-and-record is one Lua script (atomic in Redis), timed by Redis's own clock (`TIME`), so
replicas with skewed clocks still agree. Per key: a sorted set of request arrivals, a sorted set of
token entries (score = time) and a hash entry -> tokens so reservations can be corrected.
"""

from __future__ import annotations

import logging

from gemmakit.errors import ConfigError, ServiceUnavailableError
from gemmakit.safety.ratelimit import WINDOW_S, Decision, Limits

log = logging.getLogger("gemmakit.safety.ratelimit")

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[6])
local cutoff = now - window
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local nreq, ntok, entry = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff)
for _, m in ipairs(expired) do redis.call('HDEL', KEYS[3], m) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', cutoff)
local count = redis.call('ZCARD', KEYS[1])
local members = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
local times, amounts, sum = {}, {}, 0
if #members > 0 then
  local names = {}
  for i = 1, #members, 2 do
    names[#names + 1] = members[i]
    times[#times + 1] = tonumber(members[i + 1])
  end
  local vals = redis.call('HMGET', KEYS[3], unpack(names))
  for i, v in ipairs(vals) do
    amounts[i] = tonumber(v) or 0
    sum = sum + amounts[i]
  end
end
local status, retry = 0, 0
if tpm >= 0 and ntok > tpm then
  status = 3
elseif rpm >= 0 and nreq > 0 and count + nreq > rpm then
  status = 1
  local oldest = redis.call('ZRANGE', KEYS[1], count + nreq - rpm - 1, count + nreq - rpm - 1,
                            'WITHSCORES')
  retry = tonumber(oldest[2]) + window - now
elseif tpm >= 0 and ntok > 0 and sum + ntok > tpm then
  status = 2
  local need = sum + ntok - tpm
  for i = 1, #amounts do
    need = need - amounts[i]
    retry = times[i] + window - now
    if need <= 0 then break end
  end
else
  for i = 1, nreq do redis.call('ZADD', KEYS[1], now, entry .. ':' .. i) end
  count = count + nreq
  if ntok > 0 then
    redis.call('ZADD', KEYS[2], now, entry)
    redis.call('HSET', KEYS[3], entry, ntok)
    sum = sum + ntok
    times[#times + 1] = now
  end
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], window + 1000) end
end
local newest_req = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local nr = -1
if #newest_req > 0 then nr = tonumber(newest_req[2]) end
local nt = -1
if #times > 0 then nt = times[#times] end
return {status, count, nr, sum, nt, retry, now}
"""

_ADJUST = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return 0
"""


class RateLimitStoreUnavailableError(ServiceUnavailableError):
    """Redis cannot be reached or does not answer in time: the rate limit of a limited key cannot
    be checked, so its request is a 503 with Retry-After (never a 500, never unchecked)."""

    code = "ratelimit_store_unavailable"

    def __init__(self) -> None:
        super().__init__("The rate-limit store is unavailable; retry shortly.",
                         headers={"Retry-After": "1"})


TIMEOUT_S = 2.0
"""Connect and reply timeout: a stalled Redis fails requests in seconds instead of hanging them."""


class RedisStore:
    def __init__(self, url: str) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.exceptions import RedisError
        except ImportError:
            raise ConfigError("--ratelimit-store redis://… needs the redis client: "
                              "pip install 'gemmakit[redis]'") from None
        self._errors = (RedisError, OSError, TimeoutError)
        self._redis = aioredis.from_url(url, socket_timeout=TIMEOUT_S,
                                        socket_connect_timeout=TIMEOUT_S)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._adjust = self._redis.register_script(_ADJUST)

    @staticmethod
    def _keys(key: str) -> list[str]:
        base = f"gemmakit:rl:{{{key}}}"  # one hash slot per key (Redis Cluster)
        return [f"{base}:req", f"{base}:tok", f"{base}:amt"]

    async def acquire(self, key: str, limits: Limits, *, entry: str, requests: int = 0,
                      tokens: int = 0) -> Decision:
        window_ms = int(WINDOW_S * 1000)
        try:
            status, count, newest_req, total, newest_tok, retry_ms, now = await self._acquire(
                keys=self._keys(key),
                args=[limits.rpm if limits.rpm is not None else -1,
                      limits.tpm if limits.tpm is not None else -1,
                      requests, tokens, entry, window_ms])
        except self._errors as e:
            log.warning("rate-limit store unavailable: %s", e)
            raise RateLimitStoreUnavailableError() from None
        status, count, total = int(status), int(count), int(total)
        return Decision(
            allowed=status == 0,
            remaining_requests=(limits.rpm - count) if limits.rpm is not None else None,
            reset_requests_s=max(0, int(newest_req) + window_ms - int(now)) / 1000
            if int(newest_req) >= 0 else 0.0,
            remaining_tokens=(limits.tpm - total) if limits.tpm is not None else None,
            reset_tokens_s=max(0, int(newest_tok) + window_ms - int(now)) / 1000
            if int(newest_tok) >= 0 else 0.0,
            retry_after_s=max(0, int(retry_ms)) / 1000,
            too_large=status == 3)

    async def adjust(self, key: str, entry: str, tokens: int) -> None:
        keys = self._keys(key)
        try:
            await self._adjust(keys=[keys[1], keys[2]], args=[entry, tokens])
        except self._errors as e:
            log.warning("rate-limit store unavailable: %s", e)
            raise RateLimitStoreUnavailableError() from None

    async def aclose(self) -> None:
        await self._redis.aclose()

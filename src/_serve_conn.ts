/**
 * Notices a client that went away while its request waits or computes.
 *
 * `request.signal` cannot be relied on for that: with Deno 2.9.6, `Deno.serve` aborts it when a
 * client closes a connection whose request had no body, but never when the request had one
 * (measured: a client that sent from 1,000 bytes to 30 MB and closed its socket, by FIN or by
 * reset, left the signal unaborted for the 3 s the handler waited; with an empty body it aborted
 * within 15 ms). Every request that computes has a body, so a client that gave up kept its run going
 * to the end (13 s for 50 MB on 2 cores).
 *
 * So while a request is admitted, the handler also watches its TCP connection in the kernel's
 * table (`/proc/net/tcp`, `/proc/net/tcp6`, Linux): once the socket whose remote end is the
 * client's address and port is in `CLOSE_WAIT` (the client closed) or gone (reset), the
 * request is aborted as if `request.signal` had fired. One read of the tables serves every
 * watched request. Where the tables cannot be read (not Linux, no read permission, an edge
 * platform) or the connection was never seen in them, nothing is aborted: the watcher only
 * adds cancellations, never invents one for a connection it cannot see.
 *
 * @module
 */

/** How often the tables are read while something is watched (milliseconds). */
export const CONN_POLL_MS = 100;

const TABLES = ["/proc/net/tcp", "/proc/net/tcp6"];
/** `st` values of a live server-side socket; `08` is CLOSE_WAIT (the peer closed). */
const LIVE = new Set(["01"]); // ESTABLISHED
const CLOSE_WAIT = "08";

/** A kernel address (`0100007F`, 32 hex digits for IPv6) as bytes in network order. */
function kernelBytes(hex: string, little: boolean): number[] {
  const out: number[] = [];
  for (let w = 0; w < hex.length; w += 8) {
    const word = [0, 2, 4, 6].map((i) => parseInt(hex.slice(w + i, w + i + 2), 16));
    out.push(...(little ? word.reverse() : word));
  }
  return out;
}

/** An IPv4-mapped IPv6 address becomes its IPv4 bytes, so both tables compare alike. */
function canonical(bytes: number[]): string {
  const mapped = bytes.length === 16 && bytes.slice(0, 10).every((b) => b === 0) &&
    bytes[10] === 255 && bytes[11] === 255;
  const b = mapped ? bytes.slice(12) : bytes;
  return b.map((x) => x.toString(16).padStart(2, "0")).join("");
}

/** A hostname as `Deno.serve` reports it (`127.0.0.1`, `::1`, `::ffff:127.0.0.1`) as bytes. */
export function addressBytes(host: string): number[] | undefined {
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  if (v4) return v4.slice(1).map(Number);
  if (!host.includes(":")) return undefined;
  const h = host.replace(/^\[|\]$/g, "").replace(/%.*$/, "");
  let tail: number[] = [];
  let head = h;
  const dotted = /:(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})$/.exec(h);
  if (dotted) {
    tail = addressBytes(dotted[1])!;
    head = h.slice(0, -dotted[1].length) + "0:0"; // placeholder groups, replaced below
  }
  const halves = head.split("::");
  if (halves.length > 2) return undefined;
  const [l, r] = halves;
  const groups = (s: string | undefined) => (s ? s.split(":").filter((g) => g !== "") : []);
  const left = groups(l), right = groups(r);
  const zeros = head.includes("::") ? 8 - left.length - right.length : 0;
  const all = [...left, ...Array(Math.max(0, zeros)).fill("0"), ...right];
  if (all.length !== 8 || !all.every((g) => /^[0-9a-f]{1,4}$/i.test(g))) return undefined;
  const bytes = all.flatMap((g) => [parseInt(g, 16) >> 8, parseInt(g, 16) & 255]);
  if (dotted) bytes.splice(12, 4, ...tail);
  return bytes;
}

/** What the tables say about a remote end: `live`, `closed` (CLOSE_WAIT) or absent. */
type Seen = "live" | "closed";

/**
 * Parses the tables' text into remote `address:port` (canonical hex) -> state, keeping `live`
 * over `closed` where several sockets share a remote end.
 */
export function parseTables(texts: string[], little: boolean): Map<string, Seen> {
  const out = new Map<string, Seen>();
  for (const text of texts) {
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 4) continue;
      const [addr, port] = f[2].split(":");
      if (!addr || !port) continue;
      const key = `${canonical(kernelBytes(addr, little))}:${parseInt(port, 16)}`;
      const st = LIVE.has(f[3]) ? "live" : f[3] === CLOSE_WAIT ? "closed" : undefined;
      if (st === "live" || (st === "closed" && !out.has(key))) out.set(key, st);
    }
  }
  return out;
}

interface Watch {
  key: string;
  seen: boolean;
  controller: AbortController;
}

/**
 * Watches client connections; {@linkcode ConnectionWatcher.watch} gives a signal that aborts
 * when the client's socket closes. Reads the tables only while something is watched.
 */
export class ConnectionWatcher {
  readonly #watches = new Set<Watch>();
  readonly #little = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
  #timer: ReturnType<typeof setInterval> | undefined;
  #usable: boolean;

  constructor() {
    let granted = false;
    try {
      granted = Deno.build.os === "linux" &&
        TABLES.every((path) =>
          Deno.permissions.querySync({ name: "read", path }).state === "granted"
        );
    } catch {
      granted = false; // no Deno namespace or no permissions API: an edge platform
    }
    this.#usable = granted;
  }

  /** Whether the kernel's tables can be read here. */
  get usable(): boolean {
    return this.#usable;
  }

  /**
   * A signal that aborts with `also` or once the client at `remote` (as `Deno.serve`'s
   * `info.remoteAddr` gives it) has closed its connection; `also` itself where the connection
   * cannot be watched. Call `stop` when the request is answered. (Listeners, not
   * `AbortSignal.any`: nothing stays linked to `also` after `stop`.)
   */
  watch(remote: unknown, also: AbortSignal): { signal: AbortSignal; stop: () => void } {
    const r = remote as { transport?: string; hostname?: string; port?: number } | undefined;
    const bytes = this.#usable && r?.transport === "tcp" && typeof r.hostname === "string" &&
        typeof r.port === "number"
      ? addressBytes(r.hostname)
      : undefined;
    if (!bytes || also.aborted) return { signal: also, stop: () => {} };
    const w: Watch = {
      key: `${canonical(bytes)}:${r!.port}`,
      seen: false,
      controller: new AbortController(),
    };
    const pass = () => w.controller.abort(also.reason);
    also.addEventListener("abort", pass, { once: true });
    this.#watches.add(w);
    this.#timer ??= setInterval(() => this.poll(), CONN_POLL_MS);
    return {
      signal: w.controller.signal,
      stop: () => {
        also.removeEventListener("abort", pass);
        this.#drop(w);
      },
    };
  }

  #drop(w: Watch): void {
    this.#watches.delete(w);
    if (this.#watches.size === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }

  /**
   * Reads the tables now and aborts the watches whose client is gone. Also called before a
   * run starts: a request that waited behind an inline run (which blocks the timer) is
   * checked before it computes.
   */
  poll(): void {
    if (this.#watches.size === 0) return;
    let table: Map<string, Seen>;
    try {
      // Synchronous: a few KiB per hundred sockets, and no await between reading and deciding.
      table = parseTables(TABLES.map((p) => Deno.readTextFileSync(p)), this.#little);
    } catch {
      this.#usable = false;
      for (const w of [...this.#watches]) this.#drop(w);
      return;
    }
    for (const w of [...this.#watches]) {
      const st = table.get(w.key);
      if (st === "live") {
        w.seen = true;
        continue;
      }
      // Absent counts only after the socket was seen (a reset removes it from the table); a
      // socket never seen may be one these tables do not show, and is left alone.
      if (st === "closed" || w.seen) {
        this.#drop(w);
        w.controller.abort(new Error("the client closed the connection"));
      }
    }
  }

  /** Stops watching everything (the handler is closed). */
  close(): void {
    for (const w of [...this.#watches]) this.#drop(w);
  }
}

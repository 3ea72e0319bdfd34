/**
 * The Bitswap source of the fetch chain: blocks from the peers that mirror the DID.
 *
 * Instead of letting Bitswap run a DHT provider query for every block, the broker
 * finds the DID's mirrors once (rendezvous key + configured peers, cached for a
 * while; finding none is cached too, for a shorter while, so that a repo nobody
 * else mirrors does not cost a DHT lookup per batch of its walk before the PDS is
 * asked), connects to them, and opens a Helia session whose providers are exactly
 * those peers: every want goes straight to them. A batch is fetched wide (many
 * CIDs in flight at once) and every block is hash-checked here before it is
 * yielded; the fetch chain checks again before storing. Bitswap itself matches a
 * block to a want by hashing the bytes, so a peer sending bytes that do not match
 * a CID never satisfies that want: the want times out and the next source (another
 * peer, then the PDS) supplies the block.
 *
 * A Helia session drops a peer for good once it answers DONT_HAVE; so that one
 * missing block does not starve the rest of the batch, a failure opens a fresh
 * session for what is still to come (a bounded number of times per batch).
 *
 * Wants travel on a connection: when a connection to one of the session's mirrors
 * closes mid-batch (the peer restarted, its connection monitor gave up on us), the
 * wants sent on it are gone and would only fail after `blockTimeoutMs`. The broker
 * watches for that, cancels what was in flight and asks again at once on a fresh
 * session, which dials the mirror anew. That counts as one of the batch's resets.
 */
import { logger } from '@libp2p/logger'
import { verifyBlock, type CID } from '../repo/cid.ts'
import { Alarm, parallel } from './parallel.ts'
import type { Block } from '../repo/block-store.ts'
import type { BlockBroker, BrokerOptions, MirrorLocator, MirrorPeer } from './broker.ts'
import type { Connection, Libp2p, PeerId } from '@libp2p/interface'

const log = logger('atmirror:blocks:bitswap')

/** A Helia session blockstore, as far as the broker uses it. */
export interface BitswapSession {
  get: (cid: CID, options?: { signal?: AbortSignal }) => AsyncIterable<Uint8Array> | Iterable<Uint8Array>
  close?: () => void
}

export interface BitswapBrokerComponents {
  /** `helia.blockstore`: its `createSession` opens Bitswap sessions. */
  blocks: {
    createSession: (root: CID, options?: { providers?: CID[], minProviders?: number, maxProviders?: number, cidPeerFilterSize?: number, signal?: AbortSignal }) => BitswapSession
  }
  libp2p: Pick<Libp2p, 'dial' | 'getConnections' | 'addEventListener' | 'removeEventListener' | 'peerStore'>
  /** Where the peers come from (a MirrorFinder). */
  mirrors: MirrorLocator
}

export interface BitswapBrokerInit {
  /**
   * Blocks in flight at once. Wide batches are what make Bitswap fast (wants to a
   * peer are merged into few messages); Helia keeps at most 1024 wants per peer
   * and drops the rest, so stay below that.
   *
   * @default 768
   */
  concurrency?: number
  /** How long one block may take before the broker gives up on it, in ms. @default 10000 */
  blockTimeoutMs?: number
  /** How long the mirrors found for a DID are reused, in ms. @default 60000 */
  peerCacheMs?: number
  /**
   * How long a DHT lookup that found no reachable mirror of a DID is remembered, in
   * ms. Meanwhile batches of that DID skip the DHT (each lookup may take the
   * finder's whole time budget, 10 s by default) and ask only the configured peers;
   * after it, a mirror that appeared since is found. 0 does not remember.
   *
   * @default 30000
   */
  emptyCacheMs?: number
  /** Most mirror peers in a session. @default 5 */
  maxPeers?: number
  /** Time limit for connecting to one mirror, in ms. @default 5000 */
  dialTimeoutMs?: number
  /**
   * After dialling a mirror, wait up to this long for identify to finish before
   * sending wants. A burst of streams on a connection the remote has not finished
   * setting up trips its muxer's early-stream limit (10) and kills the connection.
   *
   * @default 2000
   */
  settleTimeoutMs?: number
  /** Fresh sessions opened per batch after failures before giving up on Bitswap for it. @default 8 */
  maxSessionResets?: number
}

export interface BitswapBrokerStats {
  /** Blocks fetched and verified. */
  blocks: number
  bytes: number
  /** Blocks given up on (not found, or corrupt, after a retry). */
  failed: number
  /** Wants that ran into `blockTimeoutMs`. */
  timeouts: number
  /** Sessions opened. */
  sessions: number
  /** Wants asked again because the connection they were sent on closed. */
  requeued: number
}

/** {@link BlockBroker} fetching over Bitswap from the DID's mirrors. */
export class BitswapBroker implements BlockBroker {
  readonly name = 'bitswap'
  readonly #blocks: BitswapBrokerComponents['blocks']
  readonly #libp2p: BitswapBrokerComponents['libp2p']
  readonly #mirrors: BitswapBrokerComponents['mirrors']
  readonly #concurrency: number
  readonly #blockTimeoutMs: number
  readonly #peerCacheMs: number
  readonly #emptyCacheMs: number
  readonly #maxPeers: number
  readonly #dialTimeoutMs: number
  readonly #maxSessionResets: number
  readonly #settleTimeoutMs: number
  readonly #peers = new Map<string, { peers: Promise<PeerId[]>, expires: number }>()
  /** DIDs whose last DHT lookup found no reachable mirror, until when (ms since epoch). */
  readonly #none = new Map<string, number>()
  readonly #stats: BitswapBrokerStats = { blocks: 0, bytes: 0, failed: 0, timeouts: 0, sessions: 0, requeued: 0 }

  constructor (components: BitswapBrokerComponents, init: BitswapBrokerInit = {}) {
    this.#blocks = components.blocks
    this.#libp2p = components.libp2p
    this.#mirrors = components.mirrors
    this.#concurrency = Math.max(1, init.concurrency ?? 768)
    this.#blockTimeoutMs = init.blockTimeoutMs ?? 10_000
    this.#peerCacheMs = init.peerCacheMs ?? 60_000
    this.#emptyCacheMs = init.emptyCacheMs ?? 30_000
    this.#maxPeers = Math.max(1, init.maxPeers ?? 5)
    this.#dialTimeoutMs = init.dialTimeoutMs ?? 5000
    this.#maxSessionResets = init.maxSessionResets ?? 8
    this.#settleTimeoutMs = init.settleTimeoutMs ?? 2000
  }

  stats (): BitswapBrokerStats {
    return { ...this.#stats }
  }

  /** Forgets the cached mirrors of `did` (or of every DID), including a finding of none. */
  forget (did?: string): void {
    if (did === undefined) {
      this.#peers.clear()
      this.#none.clear()
    } else {
      this.#peers.delete(did)
      this.#none.delete(did)
    }
  }

  /**
   * The connected mirrors of `did` (found once per `peerCacheMs`), or none. A
   * lookup that finds nobody is not kept as a peer list, so a mirror that appears
   * later counts; for `emptyCacheMs` after it, only the configured peers are asked
   * (no DHT lookup).
   */
  async peersFor (did: string, options: { signal?: AbortSignal } = {}): Promise<PeerId[]> {
    const now = Date.now()
    let entry = this.#peers.get(did)
    if (entry === undefined || entry.expires < now) {
      const none = this.#none.get(did)
      const dht = none === undefined || none < now
      if (!dht) log.trace('no mirrors of %s found in the last %d ms: configured peers only', did, this.#emptyCacheMs)
      const peers = this.#findAndConnect(did, { ...options, dht })
      entry = { peers, expires: now + this.#peerCacheMs }
      this.#peers.set(did, entry)
      const mine = entry
      peers.then(found => {
        if (found.length > 0) {
          this.#none.delete(did)
          return
        }
        if (this.#peers.get(did) === mine) this.#peers.delete(did)
        if (dht && this.#emptyCacheMs > 0) this.#none.set(did, Date.now() + this.#emptyCacheMs)
      }, () => { if (this.#peers.get(did) === mine) this.#peers.delete(did) })
    }
    const peers = await entry.peers
    // a cached peer may have gone away: keep the ones still connected, look again if none are
    const connected = peers.filter(peer => this.#libp2p.getConnections(peer).length > 0)
    if (connected.length > 0 || peers.length === 0) return connected
    this.#peers.delete(did)
    return await this.peersFor(did, options)
  }

  async * getMany (cids: CID[], options: BrokerOptions): AsyncGenerator<Block> {
    if (cids.length === 0 || options.did === undefined) return
    const signal = options.signal
    const peers = await this.peersFor(options.did, { signal })
    if (peers.length === 0) {
      log('no mirrors of %s to ask for %d blocks', options.did, cids.length)
      return
    }
    const did = options.did
    const providers = peers.map(peer => peer.toCID())
    const peerKeys = new Set(peers.map(peer => peer.toString()))
    const failedBefore = this.#stats.failed
    const started = performance.now()
    let yielded = 0
    let resets = 0
    let generation = 0
    let session = this.#open(cids[0] as CID, providers, signal)
    const sessions = [session]
    let corrupt: Error | undefined
    /** No more wants go out: Bitswap gave up on the batch, or the consumer stopped. */
    let stop = false
    let gaveUp = false
    /** The consumer stopped early: the wants cut short then are not failures. */
    let left = false

    // Which connection the wants in flight went out on is Helia's business; when
    // any connection to a mirror of the session closes, all of them are cancelled,
    // they wait for the mirrors to be connected again, and a fresh session asks for
    // them anew. A mirror that cannot be reached again ends the batch here (the next
    // source takes over).
    let inFlight = new AbortController()
    let reconnecting: Promise<void> | undefined
    const onClose = (evt: CustomEvent<Connection>): void => {
      if (stop || !peerKeys.has(evt.detail.remotePeer.toString())) return
      const lost = inFlight
      inFlight = new AbortController()
      lost.abort()
      if (reconnecting !== undefined) return
      log('connection to mirror %p of %s closed mid-batch; asking again for the blocks in flight', evt.detail.remotePeer, did)
      if (resets >= this.#maxSessionResets) {
        gaveUp = true
        stop = true
        return
      }
      resets++
      reconnecting = this.#reconnect(peers, signal).then(connected => {
        reconnecting = undefined
        // the consumer may have stopped meanwhile: its sessions are closed, open none
        if (stop) return
        if (!connected) {
          log('no mirror of %s reachable again; leaving the rest of the batch to the next source', did)
          gaveUp = true
          stop = true
          return
        }
        generation++
        session = this.#open(cids[0] as CID, providers, signal)
        sessions.push(session)
      })
    }
    this.#libp2p.addEventListener('connection:close', onClose)

    /** One block, asked again after a lost connection, and once more on a fresh session after a failure; undefined when Bitswap does not give it. */
    const fetchOne = async (cid: CID): Promise<Block | undefined> => {
      let retried = false
      while (true) {
        while (reconnecting !== undefined && !stop) await reconnecting
        if (stop) return undefined
        const mine = generation
        const lost = inFlight.signal
        try {
          const bytes = await this.#getOne(session, cid, signal, lost)
          verifyBlock(cid, bytes)
          this.#stats.blocks++
          this.#stats.bytes += bytes.byteLength
          return { cid, bytes }
        } catch (err) {
          signal?.throwIfAborted()
          if (lost.aborted) {
            // the connection went away under this want: not the block's fault
            if (stop) {
              if (!left) this.#stats.failed++
              return undefined
            }
            this.#stats.requeued++
            continue
          }
          const error = err as Error
          if (error.name === 'CidMismatchError' || error.name === 'UnsupportedCidError') corrupt ??= error
          // A session drops the peers that failed a want. Open a fresh one for the rest
          // (once per failure wave: wants already in flight keep their session) and
          // give this block one more try there.
          if (mine === generation) {
            if (resets >= this.#maxSessionResets) {
              log('giving up on bitswap for the rest of %d blocks after %d fresh sessions', cids.length, resets)
              gaveUp = true
              stop = true
              this.#stats.failed++
              return undefined
            }
            resets++
            generation++
            session = this.#open(cid, providers, signal)
            sessions.push(session)
          }
          if (!retried) {
            retried = true
            continue
          }
          this.#stats.failed++
          log('no block %c over bitswap - %s', cid, error.message)
          return undefined
        }
      }
    }

    // up to `concurrency` wants in flight, blocks handed on as they land
    const intake = function * (): Generator<CID> {
      for (const cid of cids) {
        if (stop) return
        yield cid
      }
    }
    const fetched = parallel(intake(), fetchOne, Math.min(this.#concurrency, cids.length))
    try {
      while (true) {
        const next = await fetched.next()
        if (next.done === true) break
        if (next.value === undefined) continue
        yielded++
        yield next.value
      }
    } finally {
      // the consumer may have stopped early: cut the wants in flight short
      left = !stop
      stop = true
      this.#libp2p.removeEventListener('connection:close', onClose)
      inFlight.abort()
      await fetched.return(undefined)
      for (const open of sessions) open.close?.()
    }
    log('%d of %d blocks of %s from %d mirrors in %d ms', yielded, cids.length, did, peers.length, Math.round(performance.now() - started))
    signal?.throwIfAborted()
    // the mirrors we had did not have it all: look for mirrors again next time
    if (gaveUp || this.#stats.failed > failedBefore) this.forget(did)
    if (corrupt !== undefined) throw corrupt
  }

  #open (root: CID, providers: CID[], signal: AbortSignal | undefined): BitswapSession {
    this.#stats.sessions++
    return this.#blocks.createSession(root, {
      providers,
      minProviders: 1,
      // as many as we have: the session then never runs a DHT query for more
      maxProviders: providers.length,
      // each want gets a filter of the peers asked for it; sized for a handful of
      // mirrors rather than Helia's 100, it costs far less per block
      cidPeerFilterSize: Math.max(8, providers.length * 2),
      signal
    })
  }

  async #getOne (session: BitswapSession, cid: CID, signal: AbortSignal | undefined, lost: AbortSignal): Promise<Uint8Array> {
    const timeout = AbortSignal.timeout(this.#blockTimeoutMs)
    const bounded = AbortSignal.any(signal === undefined ? [lost, timeout] : [signal, lost, timeout])
    const chunks: Uint8Array[] = []
    try {
      for await (const chunk of session.get(cid, { signal: bounded })) chunks.push(chunk)
    } catch (err) {
      if (timeout.aborted && !lost.aborted) this.#stats.timeouts++
      throw err
    }
    if (chunks.length === 1) return chunks[0] as Uint8Array
    return Buffer.concat(chunks)
  }

  /**
   * Connects to the mirrors again after a connection closed; true when at least
   * one is connected. A new connection gets time to settle (identify) before wants
   * go out on it, as on the first dial.
   */
  async #reconnect (peers: PeerId[], signal: AbortSignal | undefined): Promise<boolean> {
    // let libp2p drop the closed connection before asking for one
    await new Promise(resolve => setImmediate(resolve))
    const connected = await Promise.all(peers.map(async (peer) => {
      const before = new Set(this.#libp2p.getConnections(peer).map(conn => conn.id))
      // no wait (and no timer left behind) when the dial reuses a connection
      const settled = new AbortController()
      const identified = this.#identified(peer, { signal: settled.signal })
      try {
        const dialSignal = AbortSignal.any([AbortSignal.timeout(this.#dialTimeoutMs), ...(signal === undefined ? [] : [signal])])
        const connection = await this.#libp2p.dial(peer, { signal: dialSignal })
        if (!before.has(connection.id)) await identified
        return true
      } catch (err) {
        log('mirror %p not reachable again - %e', peer, err)
        return false
      } finally {
        settled.abort()
      }
    }))
    return connected.some(Boolean)
  }

  async #isIdentified (peer: PeerId): Promise<boolean> {
    try {
      return (await this.#libp2p.peerStore.get(peer)).protocols.length > 0
    } catch {
      return false
    }
  }

  /** Resolves when identify finishes with `peer`, after `settleTimeoutMs`, or when `signal` aborts (never rejects). */
  async #identified (peer: PeerId, init: { checkStore?: boolean, signal?: AbortSignal } = {}): Promise<void> {
    await new Promise<void>(resolve => {
      const done = (): void => {
        timer.clear()
        this.#libp2p.removeEventListener('peer:identify', onIdentify)
        init.signal?.removeEventListener('abort', done)
        resolve()
      }
      init.signal?.addEventListener('abort', done, { once: true })
      const onIdentify = (evt: CustomEvent<{ peerId: PeerId }>): void => { if (evt.detail.peerId.equals(peer)) done() }
      const timer = new Alarm(done)
      timer.set(this.#settleTimeoutMs)
      this.#libp2p.addEventListener('peer:identify', onIdentify)
      // listening first, then looking: an identify that ends in between is not missed
      if (init.checkStore === true) void this.#isIdentified(peer).then(yes => { if (yes) done() })
    })
  }

  async #findAndConnect (did: string, options: { signal?: AbortSignal, dht: boolean }): Promise<PeerId[]> {
    const found: MirrorPeer[] = []
    for await (const peer of this.#mirrors.findMirrors(did, { signal: options.signal, maxPeers: this.#maxPeers, dht: options.dht })) found.push(peer)
    const connected = await Promise.all(found.map(async (peer) => {
      if (this.#libp2p.getConnections(peer.id).length > 0) {
        // connected, but maybe only just (a bootstrap dial): wait for identify too
        await this.#identified(peer.id, { checkStore: true })
        return peer.id
      }
      try {
        const signal = AbortSignal.any([AbortSignal.timeout(this.#dialTimeoutMs), ...(options.signal === undefined ? [] : [options.signal])])
        const identified = this.#identified(peer.id)
        // by id: findMirrors put the addresses in the peer store, and a dial by id checks who answers
        await this.#libp2p.dial(peer.id, { signal })
        await identified
        return peer.id
      } catch (err) {
        options.signal?.throwIfAborted()
        log('mirror %p of %s not reachable - %e', peer.id, did, err)
        return undefined
      }
    }))
    const peers = connected.filter(peer => peer !== undefined)
    log('%d of %d mirrors of %s connected', peers.length, found.length, did)
    return peers
  }
}

/**
 * One address policy for every outbound HTTP request (PLC, did:web, handles, every
 * PDS call) and every redirect hop: no private, loopback, link-local, unique-local,
 * IPv4-mapped, multicast or reserved targets, so a DID document or a redirect
 * cannot point the mirror at the host's own services or its cloud's metadata
 * endpoint (`169.254.169.254`).
 *
 * The check is made where the connection is made, on the address the socket is
 * about to connect to: an undici `Agent` whose connector refuses IP literals the
 * policy forbids and resolves names through a `lookup` that refuses them too. A
 * name checked once and resolved again later (DNS rebinding) cannot get around it:
 * the address checked is the address connected to. Nothing is sent, not even a TCP
 * SYN, to a refused address.
 *
 * The services the operator configured (the PLC directory, a handle resolver) are
 * reached at their exact host and port wherever they are; what the network names
 * (DID documents, handles, redirects) is held to the policy. Two ways to relax it
 * further, both explicit:
 * - `allowLoopback`: a local test network (the PLC directory or handle resolver is
 *   on `http://localhost`, see `allowHttpLocalhost`): loopback addresses
 *   (`127.0.0.0/8`, `::1`) are allowed, everything else stays refused;
 * - `allowPrivateNetwork` (`--allow-private-network`): every address is allowed,
 *   for a mirror whose PDS or PLC lives on a private network.
 *
 * IPv4-mapped IPv6 (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) addresses
 * are refused whatever they embed: no public host is reached that way, and
 * `[::ffff:7f00:1]` is loopback in disguise. NAT64 (`64:ff9b::/96`) and 6to4
 * (`2002::/16`) are judged by the IPv4 address they embed.
 */
import { lookup as dnsLookup, type LookupAddress, type LookupAllOptions, type LookupOptions } from 'node:dns'
import { BlockList, isIP } from 'node:net'
import { Agent, buildConnector, fetch as undiciFetch } from 'undici'
import { AddressNotAllowedError } from '../errors.ts'
import type { FetchLike } from './fetch.ts'

/** Why an address is refused: the range it falls in. */
export type AddressRange = 'loopback' | 'private' | 'link-local' | 'unique-local' | 'ipv4-mapped' | 'shared' | 'multicast' | 'reserved' | 'unspecified' | 'documentation'

export interface AddressPolicyInit {
  /** Allow loopback addresses: a local test network. @default false */
  allowLoopback?: boolean
  /** Allow every address, private ranges included. @default false */
  allowPrivateNetwork?: boolean
  /**
   * Services the operator configured (the PLC directory, a handle resolver): their
   * exact host and port are reached wherever they are. Addresses learned from the
   * network (DID documents, handles, redirects) stay under the policy.
   * @default []
   */
  allowEndpoints?: readonly string[]
}

/** `host:port` of a URL as undici's connector sees it (brackets stripped, default ports filled). */
function endpointKey (hostname: string, port: string | number, protocol: string): string {
  const host = hostname.startsWith('[') ? hostname.slice(1, -1) : hostname
  return `${host.toLowerCase()}:${port === '' || port === undefined ? (protocol === 'https:' ? 443 : 80) : port}`
}

const RANGES: Array<[string, number, 'ipv4' | 'ipv6', AddressRange]> = [
  ['0.0.0.0', 8, 'ipv4', 'unspecified'],
  ['10.0.0.0', 8, 'ipv4', 'private'],
  ['100.64.0.0', 10, 'ipv4', 'shared'],
  ['127.0.0.0', 8, 'ipv4', 'loopback'],
  ['169.254.0.0', 16, 'ipv4', 'link-local'],
  ['172.16.0.0', 12, 'ipv4', 'private'],
  ['192.0.0.0', 24, 'ipv4', 'reserved'],
  ['192.0.2.0', 24, 'ipv4', 'documentation'],
  ['192.168.0.0', 16, 'ipv4', 'private'],
  ['198.18.0.0', 15, 'ipv4', 'reserved'],
  ['198.51.100.0', 24, 'ipv4', 'documentation'],
  ['203.0.113.0', 24, 'ipv4', 'documentation'],
  ['224.0.0.0', 4, 'ipv4', 'multicast'],
  ['240.0.0.0', 4, 'ipv4', 'reserved'],
  ['::1', 128, 'ipv6', 'loopback'],
  ['::', 128, 'ipv6', 'unspecified'],
  ['64:ff9b:1::', 48, 'ipv6', 'private'],
  ['100::', 64, 'ipv6', 'reserved'],
  ['2001:db8::', 32, 'ipv6', 'documentation'],
  ['fc00::', 7, 'ipv6', 'unique-local'],
  ['fe80::', 10, 'ipv6', 'link-local'],
  ['fec0::', 10, 'ipv6', 'link-local'],
  ['ff00::', 8, 'ipv6', 'multicast']
]

// One BlockList per family and range name (BlockList says whether, not which; and
// it matches IPv4 rules against IPv4-mapped IPv6, which are judged apart here).
const LISTS = { ipv4: new Map<AddressRange, BlockList>(), ipv6: new Map<AddressRange, BlockList>() }
for (const [network, prefix, family, range] of RANGES) {
  let list = LISTS[family].get(range)
  if (list === undefined) LISTS[family].set(range, list = new BlockList())
  list.addSubnet(network, prefix, family)
}

/**
 * The special range an IP address falls in, or undefined for an ordinary public
 * address. Brackets around IPv6 are accepted (`[::1]`, as URL hostnames have them).
 */
export function addressRange (address: string): AddressRange | undefined {
  const ip = address.startsWith('[') && address.endsWith(']') ? address.slice(1, -1) : address
  const family = isIP(ip)
  if (family === 0) throw new TypeError(`not an IP address: ${JSON.stringify(address)}`)
  if (family === 6) {
    const groups = expandIpv6(ip)
    if (groups !== undefined && groups.slice(0, 5).every(g => g === 0)) {
      // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible); :: and ::1 are themselves
      if (groups[5] === 0xffff) return 'ipv4-mapped'
      if (groups[5] === 0 && (groups[6] !== 0 || groups[7] > 1)) return 'ipv4-mapped'
    }
    const embedded = groups === undefined ? undefined : embeddedIpv4(groups)
    if (embedded !== undefined) return addressRange(embedded)
  }
  const type = family === 4 ? 'ipv4' : 'ipv6'
  for (const [range, list] of LISTS[type]) {
    if (list.check(ip, type)) return range
  }
  return undefined
}

/** The IPv4 address a NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address carries. */
function embeddedIpv4 (groups: number[]): string | undefined {
  const v4 = (hi: number, lo: number): string => `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`
  if (groups[0] === 0x64 && groups[1] === 0xff9b && groups.slice(2, 6).every(g => g === 0)) return v4(groups[6], groups[7])
  if (groups[0] === 0x2002) return v4(groups[1], groups[2])
  return undefined
}

/** The eight 16-bit groups of an IPv6 address (an embedded dotted IPv4 tail included). */
function expandIpv6 (ip: string): number[] | undefined {
  let text = ip.split('%')[0]
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text)
  if (dotted !== null) {
    const [a, b, c, d] = dotted[1].split('.').map(Number)
    text = text.slice(0, dotted.index) + `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
  }
  const [head, tail] = text.split('::')
  const parse = (part: string | undefined): number[] => part === undefined || part === '' ? [] : part.split(':').map(g => parseInt(g, 16))
  const left = parse(head)
  const right = parse(tail)
  if (tail === undefined) return left.length === 8 ? left : undefined
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right]
}

/** Which outbound addresses may be connected to. */
export class AddressPolicy {
  readonly allowLoopback: boolean
  readonly allowPrivateNetwork: boolean
  readonly #endpoints: ReadonlySet<string>

  constructor (init: AddressPolicyInit = {}) {
    this.allowLoopback = init.allowLoopback === true
    this.allowPrivateNetwork = init.allowPrivateNetwork === true
    this.#endpoints = new Set((init.allowEndpoints ?? []).map(href => {
      const url = new URL(href)
      return endpointKey(url.hostname, url.port, url.protocol)
    }))
  }

  /** Whether `hostname:port` is a configured service (see {@link AddressPolicyInit.allowEndpoints}). */
  isConfiguredEndpoint (hostname: string, port: string | number, protocol: string): boolean {
    return this.#endpoints.size > 0 && this.#endpoints.has(endpointKey(hostname, port, protocol))
  }

  /** The range that makes `address` (an IP) refused, or undefined when it is allowed. */
  refuses (address: string): AddressRange | undefined {
    if (this.allowPrivateNetwork) return undefined
    const range = addressRange(address)
    if (range === 'loopback' && this.allowLoopback) return undefined
    return range
  }

  /** Throws AddressNotAllowedError when `address` (an IP) is refused; `host` is what was asked for. */
  check (address: string, host: string = address): void {
    const range = this.refuses(address)
    if (range !== undefined) throw new AddressNotAllowedError(host, address, range)
  }
}

/** `dns.lookup`'s signature, as `net.connect` calls it. */
export type LookupFunction = (hostname: string, options: LookupOptions, callback: (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void) => void

/**
 * A `lookup` for `net.connect` that resolves through `resolve` (dns.lookup by
 * default) and refuses a name any of whose addresses the policy refuses.
 */
export function policyLookup (policy: AddressPolicy, resolve: LookupFunction = dnsLookup as unknown as LookupFunction): LookupFunction {
  return (hostname, options, callback) => {
    resolve(hostname, { ...options, all: true } satisfies LookupAllOptions, (err, addresses) => {
      if (err !== null) { callback(err, []); return }
      const list = Array.isArray(addresses) ? addresses : [{ address: addresses, family: isIP(addresses) }]
      try {
        if (list.length === 0) throw Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' })
        for (const { address } of list) policy.check(address, hostname)
      } catch (refused) {
        callback(refused as NodeJS.ErrnoException, [])
        return
      }
      if (options.all === true) callback(null, list)
      else callback(null, list[0].address, list[0].family)
    })
  }
}

export interface PolicyFetchInit extends AddressPolicyInit {
  /** Name resolution (tests map names to addresses with it). @default dns.lookup */
  lookup?: LookupFunction
  /** Connection timeout. @default 10_000 */
  connectTimeoutMs?: number
}

/** What {@link createPolicyAgent} also takes: limits of the WebSockets it opens. */
export interface PolicyAgentInit extends PolicyFetchInit {
  /** Largest WebSocket message accepted; a larger one fails the connection (close 1009). @default 128 MiB (undici's) */
  maxWebSocketMessageBytes?: number
  /** Told of every failed connection with its reason (a WebSocket's own error says only that it failed). */
  onConnectError?: (err: Error, target: { hostname: string, port: string | number }) => void
}

/**
 * An undici `Agent` that connects only to addresses the policy allows: the
 * dispatcher of {@link createPolicyFetch}, and of WebSockets (undici's `WebSocket`
 * takes a `dispatcher`), so an event stream a DID document names is held to the
 * same policy as every HTTP request.
 */
export function createPolicyAgent (init: PolicyAgentInit = {}): Agent & { policy: AddressPolicy } {
  const policy = new AddressPolicy(init)
  const timeout = init.connectTimeoutMs ?? 10_000
  const connect = buildConnector({ lookup: policyLookup(policy, init.lookup), timeout })
  const connectConfigured = buildConnector({ lookup: init.lookup, timeout })
  const agent = new Agent({
    ...(init.maxWebSocketMessageBytes === undefined ? {} : { webSocket: { maxPayloadSize: init.maxWebSocketMessageBytes } }),
    connect: (options, done) => {
      const callback: typeof done = init.onConnectError === undefined
        ? done
        : (err, socket) => {
            if (err !== null) init.onConnectError?.(err, { hostname: options.hostname, port: options.port })
            done(err as null, socket as NonNullable<typeof socket>)
          }
      if (policy.isConfiguredEndpoint(options.hostname, options.port, options.protocol)) {
        connectConfigured(options, callback)
        return
      }
      // net.connect skips `lookup` for IP literals: judge those here
      if (isIP(options.hostname) !== 0) {
        try {
          policy.check(options.hostname)
        } catch (err) {
          callback(err as Error, null)
          return
        }
      }
      connect(options, callback)
    }
  })
  return Object.assign(agent, { policy })
}

/**
 * A `fetch` (undici's, on an Agent of its own) that connects only to addresses
 * the policy allows. Redirects are not followed here: {@link boundedFetch} follows
 * them hop by hop, each hop through this same fetch.
 */
export function createPolicyFetch (init: PolicyFetchInit = {}): FetchLike & { policy: AddressPolicy, close: () => Promise<void> } {
  const agent = createPolicyAgent(init)
  const policy = agent.policy
  const fetchFn = async (input: string | URL, requestInit?: RequestInit): Promise<Response> => {
    try {
      return await undiciFetch(input, { ...requestInit, dispatcher: agent } as Parameters<typeof undiciFetch>[1]) as unknown as Response
    } catch (err) {
      // fetch wraps connection errors in a TypeError; a refusal is its own answer
      const cause = (err as { cause?: unknown }).cause
      if (cause instanceof AddressNotAllowedError) throw cause
      throw err
    }
  }
  return Object.assign(fetchFn, { policy, close: async () => { await agent.close() } })
}

const shared = new Map<string, FetchLike>()

/**
 * A process-wide policy fetch for `init` (one connection pool per combination):
 * with nothing relaxed, the fetch used wherever none is given.
 */
export function defaultPolicyFetch (init: AddressPolicyInit = {}): FetchLike {
  const key = JSON.stringify([init.allowLoopback === true, init.allowPrivateNetwork === true, [...init.allowEndpoints ?? []].sort()])
  let fetchFn = shared.get(key)
  if (fetchFn === undefined) shared.set(key, fetchFn = createPolicyFetch(init))
  return fetchFn
}

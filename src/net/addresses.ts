/**
 * Multiaddr handling for the two network modes: defaults, validation of what the user
 * passes (`--listen`, `--bootstrap`, `--peer`), and the private mode's dial allow-list.
 */
import { BlockList, isIP } from 'node:net'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { InvalidMultiaddrError } from '../errors.ts'

/** How the node joins a network. */
export type NetworkMode = 'public' | 'private'

/** The IPFS Amino DHT protocol. */
export const AMINO_DHT_PROTOCOL = '/ipfs/kad/1.0.0'

/** Listen addresses when none are given. */
export function defaultListenAddresses (mode: NetworkMode): string[] {
  return mode === 'public' ? ['/ip4/0.0.0.0/tcp/4001'] : ['/ip4/127.0.0.1/tcp/0']
}

/**
 * The IPFS bootstrap peers kubo and Helia use (kubo config/bootstrap_peers.go). Only
 * the public mode dials them.
 */
export const PUBLIC_BOOTSTRAP_PEERS: readonly string[] = [
  '/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN',
  '/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb',
  '/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt',
  '/dnsaddr/va1.bootstrap.libp2p.io/p2p/12D3KooWKnDdG3iXw9eTFijk3EWSunZcFi54Zka4wmtqtt6rPxc8',
  '/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ'
]

const HOST_PROTOCOLS = new Set(['ip4', 'ip6', 'dns', 'dns4', 'dns6', 'dnsaddr'])

/** Parses a multiaddr string; InvalidMultiaddrError when it is not one. */
export function parseMultiaddr (value: string, what = 'multiaddr'): Multiaddr {
  try {
    return multiaddr(value)
  } catch (err) {
    throw new InvalidMultiaddrError(value, `not a valid ${what}`, { cause: err })
  }
}

/** A listen address: must name an IP and a TCP port (the only transport we run). */
export function parseListenAddress (value: string): Multiaddr {
  const ma = parseMultiaddr(value, 'listen address')
  const names = ma.getComponents().map(c => c.name)
  if ((names[0] !== 'ip4' && names[0] !== 'ip6') || names[1] !== 'tcp' || names.length !== 2) {
    throw new InvalidMultiaddrError(value, 'listen addresses look like /ip4/127.0.0.1/tcp/4001')
  }
  return ma
}

/**
 * A bootstrap peer: a dialable address ending in /p2p/<peer id>. In private mode a
 * `/dnsaddr` is refused: it is resolved through a public DNS TXT lookup into
 * addresses nobody listed, which the private dial allow-list would then refuse.
 */
export function parseBootstrapAddress (value: string, mode: NetworkMode = 'public'): Multiaddr {
  const ma = parseMultiaddr(value, 'bootstrap address')
  const components = ma.getComponents()
  if (components.at(-1)?.name !== 'p2p') throw new InvalidMultiaddrError(value, 'bootstrap addresses must end with /p2p/<peer id>')
  if (!HOST_PROTOCOLS.has(components[0]?.name ?? '')) throw new InvalidMultiaddrError(value, 'bootstrap addresses must start with a host (/ip4, /ip6, /dns…)')
  refuseDnsaddr(ma, value, mode)
  return ma
}

/**
 * A configured mirror peer (`--peer`): a dialable address starting with a host, with
 * or without /p2p/<peer id>. Private mode refuses `/dnsaddr` as for bootstrap peers.
 */
export function parsePeerAddress (value: string, mode: NetworkMode = 'public'): Multiaddr {
  const ma = parseMultiaddr(value, 'peer address')
  if (!HOST_PROTOCOLS.has(ma.getComponents()[0]?.name ?? '')) throw new InvalidMultiaddrError(value, 'peer addresses must start with a host (/ip4, /ip6, /dns…)')
  refuseDnsaddr(ma, value, mode)
  return ma
}

function refuseDnsaddr (ma: Multiaddr, value: string, mode: NetworkMode): void {
  if (mode === 'private' && ma.getComponents()[0]?.name === 'dnsaddr') {
    throw new InvalidMultiaddrError(value, 'private mode cannot use /dnsaddr (it resolves through public DNS to addresses the private mode may not dial); give /ip4, /ip6 or /dns4 addresses')
  }
}

/** The host (IP or DNS name) a multiaddr names, if any. */
export function multiaddrHost (ma: Multiaddr): string | undefined {
  const first = ma.getComponents()[0]
  return first !== undefined && HOST_PROTOCOLS.has(first.name) ? first.value : undefined
}

/** The peer id a multiaddr ends with, if any. */
export function multiaddrPeerId (ma: Multiaddr): string | undefined {
  const last = ma.getComponents().at(-1)
  return last?.name === 'p2p' ? last.value : undefined
}

/**
 * Which hosts the private mode may dial: loopback, the hosts of the listen,
 * bootstrap, announce and configured peer addresses, and any extra IPs or CIDR ranges. Everything else is refused, so
 * an address learned from a peer can never take the node elsewhere.
 */
export class DialAllowList {
  readonly #ips = new BlockList()
  readonly #names = new Set<string>()

  constructor (init: { addresses?: Multiaddr[], allow?: string[] } = {}) {
    this.#ips.addSubnet('127.0.0.0', 8, 'ipv4')
    this.#ips.addAddress('::1', 'ipv6')
    for (const ma of init.addresses ?? []) {
      const host = multiaddrHost(ma)
      if (host === undefined || host === '0.0.0.0' || host === '::') continue
      this.#add(host)
    }
    for (const entry of init.allow ?? []) this.#add(entry)
  }

  #add (entry: string): void {
    const [ip, bits] = entry.split('/')
    const family = isIP(ip ?? '')
    if (family === 0) {
      this.#names.add(entry.toLowerCase())
      return
    }
    const type = family === 4 ? 'ipv4' : 'ipv6'
    if (bits === undefined) this.#ips.addAddress(ip as string, type)
    else this.#ips.addSubnet(ip as string, Number(bits), type)
  }

  /** Whether a dial to this address is allowed. */
  allows (ma: Multiaddr): boolean {
    const components = ma.getComponents()
    // A relayed address reaches someone else through the relay: never in private mode.
    if (components.some(c => c.name === 'p2p-circuit')) return false
    const first = components[0]
    if (first === undefined) return false
    if (first.name === 'ip4' || first.name === 'ip6') {
      return first.value !== undefined && this.#ips.check(first.value, first.name === 'ip4' ? 'ipv4' : 'ipv6')
    }
    if (HOST_PROTOCOLS.has(first.name)) return first.value !== undefined && this.#names.has(first.value.toLowerCase())
    return false
  }
}

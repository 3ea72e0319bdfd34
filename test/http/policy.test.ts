/**
 * The outbound address policy (src/http/policy.ts) and redirects (boundedFetch):
 * the policy judged on IP literals and on names (through a lookup the test
 * controls), then real requests to servers on 127.0.0.1 — one that redirects, and
 * one that records whether it was asked, so a refused hop is shown not to have
 * reached it.
 */
import assert from 'node:assert/strict'
import type { LookupAddress } from 'node:dns'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { boundedFetch } from '../../src/http/fetch.ts'
import { AddressPolicy, addressRange, createPolicyFetch, policyLookup, type LookupFunction } from '../../src/http/policy.ts'
import { xrpcGet } from '../../src/http/xrpc.ts'

describe('address policy on IP literals', () => {
  const strict = new AddressPolicy()
  const refused: Array<[string, string]> = [
    ['127.0.0.1', 'loopback'],
    ['127.255.0.9', 'loopback'],
    ['::1', 'loopback'],
    ['[::1]', 'loopback'],
    ['::ffff:7f00:1', 'ipv4-mapped'],
    ['::ffff:127.0.0.1', 'ipv4-mapped'],
    ['::ffff:8.8.8.8', 'ipv4-mapped'],
    ['::127.0.0.1', 'ipv4-mapped'],
    ['169.254.169.254', 'link-local'],
    ['fe80::1', 'link-local'],
    ['10.0.0.1', 'private'],
    ['10.255.255.255', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.1', 'private'],
    ['192.168.1.1', 'private'],
    ['100.64.0.1', 'shared'],
    ['fc00::1', 'unique-local'],
    ['fd12:3456::1', 'unique-local'],
    ['0.0.0.0', 'unspecified'],
    ['::', 'unspecified'],
    ['224.0.0.1', 'multicast'],
    ['ff02::1', 'multicast'],
    ['255.255.255.255', 'reserved'],
    ['64:ff9b::7f00:1', 'loopback'],
    ['64:ff9b::a9fe:a9fe', 'link-local'],
    ['2002:a00:1::', 'private']
  ]
  for (const [ip, range] of refused) {
    it(`refuses ${ip} (${range})`, () => {
      assert.equal(addressRange(ip), range)
      assert.equal(strict.refuses(ip), range)
      assert.throws(() => { strict.check(ip) }, (err: Error & { range?: string, address?: string }) => err.name === 'AddressNotAllowedError' && err.range === range && err.address === ip)
    })
  }

  for (const ip of ['8.8.8.8', '1.1.1.1', '172.32.0.1', '2606:4700::1111', '64:ff9b::808:808', '2002:808:808::']) {
    it(`allows the public address ${ip}`, () => {
      assert.equal(strict.refuses(ip), undefined)
      strict.check(ip)
    })
  }

  it('a local test network allows loopback and nothing else', () => {
    const test = new AddressPolicy({ allowLoopback: true })
    assert.equal(test.refuses('127.0.0.1'), undefined)
    assert.equal(test.refuses('::1'), undefined)
    assert.equal(test.refuses('::ffff:7f00:1'), 'ipv4-mapped')
    assert.equal(test.refuses('169.254.169.254'), 'link-local')
    assert.equal(test.refuses('10.0.0.1'), 'private')
    assert.equal(test.refuses('fc00::1'), 'unique-local')
  })

  it('allowPrivateNetwork allows every range', () => {
    const open = new AddressPolicy({ allowPrivateNetwork: true })
    for (const [ip] of refused) assert.equal(open.refuses(ip), undefined, ip)
  })
})

/** A lookup that answers from a table, as dns.lookup would. */
function tableLookup (table: Record<string, string[]>): LookupFunction & { asked: string[] } {
  const asked: string[] = []
  const lookup: LookupFunction = (hostname, options, callback) => {
    asked.push(hostname)
    const addresses = table[hostname]
    if (addresses === undefined) {
      callback(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }), [])
      return
    }
    const list: LookupAddress[] = addresses.map(address => ({ address, family: address.includes(':') ? 6 : 4 }))
    if (options.all === true) callback(null, list)
    else callback(null, list[0].address, list[0].family)
  }
  return Object.assign(lookup, { asked })
}

describe('address policy on names', () => {
  const resolve = async (lookup: LookupFunction, name: string): Promise<unknown> => await new Promise((resolve, reject) => {
    lookup(name, { all: true }, (err, addresses) => { if (err !== null) reject(err); else resolve(addresses) })
  })

  it('refuses localhost (the system resolver answers it with loopback)', async () => {
    await assert.rejects(resolve(policyLookup(new AddressPolicy()), 'localhost'), (err: Error & { host?: string, range?: string }) =>
      err.name === 'AddressNotAllowedError' && err.host === 'localhost' && err.range === 'loopback')
  })

  it('refuses a name that resolves to loopback', async () => {
    const lookup = tableLookup({ 'pds.test': ['127.0.0.1'] })
    await assert.rejects(resolve(policyLookup(new AddressPolicy(), lookup), 'pds.test'), { name: 'AddressNotAllowedError' })
  })

  it('refuses a name when any of its addresses is refused', async () => {
    const lookup = tableLookup({ 'mixed.test': ['93.184.216.34', '169.254.169.254'] })
    await assert.rejects(resolve(policyLookup(new AddressPolicy(), lookup), 'mixed.test'), (err: Error & { address?: string }) =>
      err.name === 'AddressNotAllowedError' && err.address === '169.254.169.254')
  })

  it('passes a public name through', async () => {
    const lookup = tableLookup({ 'pds.example.com': ['93.184.216.34'] })
    assert.deepEqual(await resolve(policyLookup(new AddressPolicy(), lookup), 'pds.example.com'), [{ address: '93.184.216.34', family: 4 }])
  })
})

interface Recorder {
  server: Server
  port: number
  asked: string[]
}

async function listen (handler: (path: string, res: import('node:http').ServerResponse, port: number) => void): Promise<Recorder> {
  const asked: string[] = []
  const recorder = { asked } as unknown as Recorder
  const server = createServer((req, res) => {
    asked.push(req.url ?? '')
    handler(req.url ?? '', res, recorder.port)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  recorder.server = server
  recorder.port = (server.address() as AddressInfo).port
  return recorder
}

describe('requests and redirects under the policy', () => {
  let target: Recorder
  let redirector: Recorder
  /** Where the redirector sends `/go/<name>`. */
  let locations: Record<string, string>
  // a local test network: loopback allowed, everything else refused; its resolver
  // knows one name, which answers with the cloud metadata address
  const testNet = createPolicyFetch({ allowLoopback: true, lookup: tableLookup({ 'metadata.test': ['169.254.169.254'] }) })

  before(async () => {
    target = await listen((_path, res) => { res.setHeader('connection', 'close'); res.end('secret') })
    redirector = await listen((path, res, port) => {
      const name = path.slice('/go/'.length)
      if (path.startsWith('/xrpc/')) {
        res.writeHead(302, { location: locations.metadata })
      } else if (path === '/loop') {
        res.writeHead(302, { location: `http://127.0.0.1:${port}/loop` })
      } else if (locations[name] !== undefined) {
        res.writeHead(302, { location: locations[name] })
      } else {
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end('{}')
        return
      }
      res.end()
    })
    locations = {
      metadata: 'http://metadata.test/latest/meta-data/iam/security-credentials/',
      mapped: `http://[::ffff:7f00:1]:${target.port}/mapped`,
      loopback: `http://127.0.0.1:${target.port}/loopback`,
      file: 'file:///etc/passwd'
    }
  })

  after(async () => {
    target.server.close()
    redirector.server.close()
    await testNet.close()
  })

  it('follows a redirect the policy allows (control: the target can be reached)', async () => {
    const res = await boundedFetch(`http://127.0.0.1:${redirector.port}/go/loopback`, { fetch: testNet })
    assert.equal(await res.text(), 'secret')
    assert.deepEqual(target.asked, ['/loopback'])
    target.asked.length = 0
  })

  it('refuses a redirect to the cloud metadata address', async () => {
    await assert.rejects(boundedFetch(`http://127.0.0.1:${redirector.port}/go/metadata`, { fetch: testNet }), (err: Error & { address?: string }) =>
      err.name === 'AddressNotAllowedError' && err.address === '169.254.169.254')
  })

  it('refuses a redirect to an IPv4-mapped loopback address, and the target is never asked', async () => {
    await assert.rejects(boundedFetch(`http://127.0.0.1:${redirector.port}/go/mapped`, { fetch: testNet }), (err: Error & { range?: string }) =>
      err.name === 'AddressNotAllowedError' && err.range === 'ipv4-mapped')
    assert.deepEqual(target.asked, [])
  })

  it('refuses a redirect to something other than http(s)', async () => {
    await assert.rejects(boundedFetch(`http://127.0.0.1:${redirector.port}/go/file`, { fetch: testNet }), { name: 'RedirectRefusedError' })
  })

  it('bounds the number of hops', async () => {
    redirector.asked.length = 0
    await assert.rejects(boundedFetch(`http://127.0.0.1:${redirector.port}/loop`, { fetch: testNet, maxRedirects: 3 }), (err: Error) =>
      err.name === 'RedirectRefusedError' && /more than 3 hops/.test(err.message))
    assert.equal(redirector.asked.length, 4)
  })

  it('an XRPC call that is redirected to a refused address fails with the policy error, not "PDS unavailable"', async () => {
    await assert.rejects(xrpcGet(`http://127.0.0.1:${redirector.port}`, 'com.atproto.sync.getLatestCommit', { did: 'did:plc:x' }, { fetch: testNet }), { name: 'AddressNotAllowedError' })
  })

  it('without the test network flag, a name that resolves to loopback is refused and nothing is asked', async () => {
    const lookup = tableLookup({ 'pds.test': ['127.0.0.1'] })
    const strict = createPolicyFetch({ lookup })
    try {
      await assert.rejects(boundedFetch(`http://pds.test:${target.port}/named`, { fetch: strict }), (err: Error & { host?: string }) =>
        err.name === 'AddressNotAllowedError' && err.host === 'pds.test')
      assert.deepEqual(lookup.asked, ['pds.test'])
      assert.deepEqual(target.asked, [])
    } finally {
      await strict.close()
    }
  })

  it('the check is made at each connection: a name that re-resolves elsewhere is refused then', async () => {
    // DNS rebinding: an allowed answer first, then the metadata address. The target
    // closes every connection, so each request connects (and resolves) anew.
    let answer = '127.0.0.1'
    const lookup: LookupFunction = (_hostname, options, callback) => {
      if (options.all === true) callback(null, [{ address: answer, family: 4 }])
      else callback(null, answer, 4)
    }
    const rebinding = createPolicyFetch({ lookup, allowLoopback: true })
    try {
      assert.equal(await (await boundedFetch(`http://rebind.test:${target.port}/first`, { fetch: rebinding })).text(), 'secret')
      answer = '169.254.169.254'
      await assert.rejects(boundedFetch(`http://rebind.test:${target.port}/second`, { fetch: rebinding }), (err: Error & { address?: string }) =>
        err.name === 'AddressNotAllowedError' && err.address === '169.254.169.254')
      assert.deepEqual(target.asked, ['/first'])
      target.asked.length = 0
    } finally {
      await rebinding.close()
    }
  })

  it('a configured service is reached wherever it is; the same host on another port is not', async () => {
    const configured = createPolicyFetch({ allowEndpoints: [`http://127.0.0.1:${redirector.port}`] })
    try {
      assert.equal((await boundedFetch(`http://127.0.0.1:${redirector.port}/plain`, { fetch: configured })).status, 200)
      await assert.rejects(boundedFetch(`http://127.0.0.1:${redirector.port}/go/loopback`, { fetch: configured }), (err: Error & { address?: string }) =>
        err.name === 'AddressNotAllowedError' && err.address === '127.0.0.1')
      assert.deepEqual(target.asked, [])
    } finally {
      await configured.close()
    }
  })

  it('the default fetch (no policy relaxed) refuses a loopback PDS outright', async () => {
    await assert.rejects(xrpcGet(`http://127.0.0.1:${target.port}`, 'com.atproto.sync.getLatestCommit', { did: 'did:plc:x' }), { name: 'AddressNotAllowedError' })
    await assert.rejects(xrpcGet(`https://localhost:${target.port}`, 'com.atproto.sync.getLatestCommit', { did: 'did:plc:x' }), { name: 'AddressNotAllowedError' })
    assert.deepEqual(target.asked, [])
  })
})

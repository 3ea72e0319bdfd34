/**
 * The throughput floor of a getRepo download (PdsClient): a host that drips bytes
 * (never idle, never done) fails once the grace period is over and a window brought
 * less than the floor, and the server sees the client leave; a host above the
 * floor, or any host with the floor off, is read to the end. Timings are scaled
 * down through the client's init options.
 */
import assert from 'node:assert/strict'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { PdsClient } from '../../src/blocks/pds.ts'
import { defaultPolicyFetch } from '../../src/http/policy.ts'
import { drip, type Drip } from '../helpers/drip.ts'
import { until } from '../helpers/until.ts'

const DID = 'did:plc:ewvi7nxzyoun6zhxrhs64oiz'
/** A local test network: loopback allowed. */
const fetch = defaultPolicyFetch({ allowLoopback: true })

describe('getRepo throughput floor', () => {
  let server: Server
  let url: string
  const drips: Drip[] = []
  /** What the next request is answered with. */
  let answer: { body: Uint8Array, intervalMs: number, bytesPerWrite: number }

  before(async () => {
    server = createServer((req, res) => {
      const did = new URL(req.url ?? '/', 'http://localhost').searchParams.get('did') ?? ''
      drip(res, answer.body, drips, did, { intervalMs: answer.intervalMs, bytesPerWrite: answer.bytesPerWrite })
    })
    await new Promise<void>(resolve => { server.listen(0, '127.0.0.1', resolve) })
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })

  after(async () => {
    server.closeAllConnections()
    await new Promise(resolve => server.close(resolve))
  })

  const read = async (client: PdsClient): Promise<number> => {
    let bytes = 0
    for await (const chunk of client.getRepo(url, DID)) bytes += chunk.byteLength
    return bytes
  }

  it('a host dripping below the floor fails with PdsUnavailableError, and the server sees the client leave', async () => {
    // one byte every 10 ms is 100 bytes/s; the floor asks for 1000
    answer = { body: new Uint8Array(100_000), intervalMs: 10, bytesPerWrite: 1 }
    const client = new PdsClient({ minBytesPerSecond: 1000, rateGraceMs: 100, rateWindowMs: 100, idleTimeoutMs: 10_000, fetch })
    await assert.rejects(read(client), (err: Error) => {
      assert.equal(err.name, 'PdsUnavailableError')
      assert.match(err.message, /too slow.*below the floor of 1000 bytes\/s.*did=did:plc:/)
      return true
    })
    const record = drips.at(-1) as Drip
    await until('the server to see the client leave', () => record.abandoned)
    assert.equal(record.finished, false)
    assert.ok(record.sent < answer.body.length)
  })

  it('a host above the floor is read to the end', async () => {
    // 4 KiB every 10 ms is about 400 KB/s, far above a 1000 bytes/s floor, for a few windows
    answer = { body: new Uint8Array(400_000).fill(7), intervalMs: 10, bytesPerWrite: 4096 }
    const client = new PdsClient({ minBytesPerSecond: 1000, rateGraceMs: 100, rateWindowMs: 300, idleTimeoutMs: 10_000, fetch })
    assert.equal(await read(client), answer.body.length)
    assert.equal(drips.at(-1)?.finished, true)
  })

  it('with the floor off (0) a slow host is read to the end', async () => {
    answer = { body: new Uint8Array(40).fill(1), intervalMs: 10, bytesPerWrite: 1 }
    const client = new PdsClient({ minBytesPerSecond: 0, rateGraceMs: 10, rateWindowMs: 10, idleTimeoutMs: 10_000, fetch })
    assert.equal(await read(client), 40)
    assert.equal(drips.at(-1)?.finished, true)
  })

  it("the caller's abort ends a drip at once, as the caller's own AbortError", async () => {
    answer = { body: new Uint8Array(100_000), intervalMs: 10, bytesPerWrite: 1 }
    const client = new PdsClient({ minBytesPerSecond: 0, idleTimeoutMs: 10_000, fetch })
    const controller = new AbortController()
    const reading = (async () => {
      for await (const chunk of client.getRepo(url, DID, { signal: controller.signal })) assert.ok(chunk.byteLength > 0)
    })()
    await until('the drip to start', () => (drips.at(-1)?.sent ?? 0) > 5 && drips.at(-1)?.finished === false)
    const record = drips.at(-1) as Drip
    controller.abort(new DOMException('unpinned', 'AbortError'))
    await assert.rejects(reading, { name: 'AbortError', message: 'unpinned' })
    await until('the server to see the client leave', () => record.abandoned)
  })
})

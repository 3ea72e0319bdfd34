/**
 * The event-stream client on a `ws` server on 127.0.0.1: binary messages come
 * through in order; a text message, a frame over the size limit (refused from its
 * header: the server sees close 1009) and a host that is not allowed by the address
 * policy all end the stream with a named error.
 */
import assert from 'node:assert/strict'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { after, before, describe, it } from 'node:test'
import { WebSocketServer, type WebSocket } from 'ws'
import { EventStreamClient } from '../../src/http/event-stream.ts'

describe('event streams', () => {
  let wss: WebSocketServer
  let port: number
  let onConnection: (ws: WebSocket) => void = () => {}

  before(async () => {
    wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
    await once(wss, 'listening')
    port = (wss.address() as AddressInfo).port
    wss.on('connection', (ws) => { onConnection(ws) })
  })

  after(async () => {
    for (const client of wss.clients) client.terminate()
    await new Promise(resolve => wss.close(resolve))
  })

  async function read (client: EventStreamClient): Promise<{ messages: number[], error?: Error }> {
    const messages: number[] = []
    try {
      for await (const message of client.subscribe(`ws://localhost:${port}/xrpc/com.atproto.sync.subscribeRepos`)) messages.push(message.byteLength)
    } catch (err) {
      return { messages, error: err as Error }
    }
    return { messages }
  }

  it('yields binary messages in order and ends when the host closes normally', async () => {
    onConnection = (ws) => {
      ws.send(new Uint8Array(1))
      ws.send(new Uint8Array(2))
      ws.close(1000)
    }
    const client = new EventStreamClient({ allowLoopback: true })
    try {
      assert.deepEqual(await read(client), { messages: [1, 2] })
    } finally {
      await client.close()
    }
  })

  it('refuses a text message', async () => {
    onConnection = (ws) => { ws.send('hello') }
    const client = new EventStreamClient({ allowLoopback: true })
    try {
      const { error } = await read(client)
      assert.equal(error?.name, 'FirehoseFrameError')
      assert.match(error?.message ?? '', /a text message/)
    } finally {
      await client.close()
    }
  })

  it('refuses a 10 MB frame from its header, closing with 1009', async () => {
    let closed: Promise<unknown[]> | undefined
    onConnection = (ws) => {
      closed = once(ws, 'close')
      ws.send(new Uint8Array(1))
      ws.send(new Uint8Array(10 * 1024 * 1024))
    }
    const client = new EventStreamClient({ allowLoopback: true })
    try {
      const { messages, error } = await read(client)
      assert.deepEqual(messages, [1])
      assert.equal(error?.name, 'FirehoseConnectionError')
      assert.match(error?.message ?? '', /5242880-byte limit/)
      const [code] = await closed as [number]
      assert.equal(code, 1009)
    } finally {
      await client.close()
    }
  })

  it('does not connect to a loopback host unless the policy allows it', async () => {
    let connections = 0
    onConnection = () => { connections++ }
    const client = new EventStreamClient()
    try {
      const { error } = await read(client)
      assert.equal(error?.name, 'FirehoseConnectionError')
      assert.match(error?.message ?? '', /could not be opened: outbound address refused by the address policy/)
      assert.equal(connections, 0)
    } finally {
      await client.close()
    }
  })
})

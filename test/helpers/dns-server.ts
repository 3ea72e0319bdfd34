/**
 * A tiny authoritative DNS server on 127.0.0.1 (UDP) answering TXT queries from a
 * table, NXDOMAIN for names it does not know. Enough for node's resolver to look
 * up `_atproto.<handle>` without leaving the machine.
 */
import { createSocket, type RemoteInfo } from 'node:dgram'
import type { AddressInfo } from 'node:net'

export interface TestDnsServer {
  /** `127.0.0.1:PORT`, for `Resolver.setServers`. */
  server: string
  /** Names queried, in order. */
  queries: string[]
  close: () => Promise<void>
}

const TXT = 16

/**
 * Serves `records`: name → TXT strings (one record each). Names in `silent` are
 * never answered (a server that times out); a name in `hold` is answered only once
 * the promise its function returns settles (to order events without sleeping).
 */
export async function startDnsServer (records: Map<string, string[]>, init: { silent?: Set<string>, hold?: Map<string, () => Promise<void>> } = {}): Promise<TestDnsServer> {
  const socket = createSocket('udp4')
  const queries: string[] = []
  socket.on('message', (msg, rinfo) => {
    const { name } = readQuestion(msg)
    queries.push(name)
    if (init.silent?.has(name.toLowerCase()) === true) return
    const hold = init.hold?.get(name.toLowerCase())
    if (hold === undefined) answer(msg, rinfo)
    else void hold().finally(() => { answer(msg, rinfo) })
  })

  function answer (msg: Buffer, rinfo: RemoteInfo): void {
    const { name, end, type } = readQuestion(msg)
    const answers = type === TXT ? records.get(name.toLowerCase()) ?? [] : []
    const known = records.has(name.toLowerCase())
    const header = Buffer.alloc(12)
    msg.copy(header, 0, 0, 2) // id
    header.writeUInt16BE(0x8400 | (msg.readUInt16BE(2) & 0x0100) | (known ? 0 : 3), 2) // QR, AA, RD copied, NXDOMAIN when unknown
    header.writeUInt16BE(1, 4)
    header.writeUInt16BE(answers.length, 6)
    const parts = [header, msg.subarray(12, end)]
    for (const text of answers) {
      const data = Buffer.from(text)
      const rr = Buffer.alloc(12)
      rr.writeUInt16BE(0xc00c, 0) // name: pointer to the question
      rr.writeUInt16BE(TXT, 2)
      rr.writeUInt16BE(1, 4) // IN
      rr.writeUInt32BE(60, 6)
      rr.writeUInt16BE(data.length + 1, 10)
      parts.push(rr, Buffer.from([data.length]), data)
    }
    socket.send(Buffer.concat(parts), rinfo.port, rinfo.address)
  }
  await new Promise<void>(resolve => socket.bind(0, '127.0.0.1', resolve))
  const { port } = socket.address() as AddressInfo
  return {
    server: `127.0.0.1:${port}`,
    queries,
    close: async () => { await new Promise<void>(resolve => socket.close(() => { resolve() })) }
  }
}

function readQuestion (msg: Buffer): { name: string, type: number, end: number } {
  const labels: string[] = []
  let offset = 12
  while (msg[offset] !== 0) {
    const length = msg[offset] as number
    labels.push(msg.subarray(offset + 1, offset + 1 + length).toString('ascii'))
    offset += 1 + length
  }
  offset += 1
  return { name: labels.join('.'), type: msg.readUInt16BE(offset), end: offset + 4 }
}

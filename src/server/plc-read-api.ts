/**
 * The PLC directory's read API for the DIDs this mirror pins, on the public HTTP
 * server, so a mirror can stand in as a read replica of plc.directory for them:
 *
 *   GET /{did}              the DID document (today's Multikey form)
 *   GET /{did}/data         the state the log ends in ({ did, rotationKeys, verificationMethods, alsoKnownAs, services })
 *   GET /{did}/log          the operations of the current chain
 *   GET /{did}/log/last     its last operation
 *   GET /{did}/log/audit    every entry, nullified ones included
 *
 * Everything comes from the stored verified log (src/identity/plc-logs.ts), verified
 * again before it is served (once per stored version: a verified log is reused while
 * the stored one has the same entries, so a request costs no signature checks). A DID this mirror holds no log for is 404 with the
 * directory's `DID not registered` message; a tombstoned one is 410 for the
 * document and its data, as the directory answers.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { logger } from '@libp2p/logger'
import { plcDocument, verifyPlcLog, type VerifiedPlcLog } from '../identity/plc-log.ts'
import type { StoredPlcLog } from '../identity/plc-logs.ts'
import { sendJson, type PublicRoute } from './public-server.ts'

const log = logger('atmirror:http:plc')

const PATH = /^\/(did:plc:[a-z2-7]{24})(\/data|\/log|\/log\/last|\/log\/audit)?$/

/** Where the logs come from (MirrorIdentityStore: pinned DIDs only). */
export interface PlcReadApiComponents {
  logs: { getPlcLog: (did: string) => Promise<StoredPlcLog | undefined> }
}

/** The route to mount on the public server (`http.mount(plcReadRoute(…))`). */
export function plcReadRoute (components: PlcReadApiComponents): PublicRoute {
  const verifiedLogs = new Map<string, { version: string, log: VerifiedPlcLog }>()
  const verify = (did: string, stored: StoredPlcLog): VerifiedPlcLog => {
    const version = JSON.stringify(stored.entries)
    const cached = verifiedLogs.get(did)
    if (cached?.version === version) return cached.log
    const log = verifyPlcLog(did, stored.entries)
    verifiedLogs.delete(did)
    verifiedLogs.set(did, { version, log })
    if (verifiedLogs.size > 1000) verifiedLogs.delete(verifiedLogs.keys().next().value as string)
    return log
  }
  return {
    path: '/did:plc',
    match: (pathname) => PATH.test(pathname),
    handler: async (_req: IncomingMessage, res: ServerResponse, url: URL) => {
      const [, did = '', what = ''] = PATH.exec(url.pathname) ?? []
      const stored = await components.logs.getPlcLog(did)
      let verified: VerifiedPlcLog | undefined
      if (stored !== undefined) {
        try {
          verified = verify(did, stored)
        } catch (err) {
          log.error('stored PLC log of %s does not verify; not serving it - %e', did, err)
        }
      }
      if (verified === undefined) {
        sendJson(res, 404, { message: `DID not registered: ${did}` })
        return
      }
      const current = verified.entries.filter(entry => !entry.nullified)
      switch (what) {
        case '/log/audit': sendJson(res, 200, verified.entries); return
        case '/log': sendJson(res, 200, current.map(entry => entry.operation)); return
        case '/log/last': sendJson(res, 200, current.at(-1)?.operation); return
      }
      if (verified.data === null) {
        sendJson(res, 410, { message: `DID not available: ${did}` })
        return
      }
      if (what === '/data') sendJson(res, 200, verified.data)
      else sendJson(res, 200, plcDocument(verified.data), 'application/did+ld+json')
    }
  }
}

/**
 * Packs this repository and installs the tarball into an empty project the way a
 * user would (`npm install ./atmirror-x.y.z.tgz --omit=dev`, dependencies through
 * npm's cache or registry), for the packaging test and the start-up bench.
 *
 * Every command runs with the pinned Node (devDependency "node") first on PATH, so
 * npm's scripts and the installed bin's `#!/usr/bin/env node` use it, and without
 * the npm_* variables an outer `npm test` / `npm run` sets.
 */
import { execFile } from 'node:child_process'
import { mkdir, realpath, writeFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'

export const root = join(import.meta.dirname, '..')

export interface Run { code: number, stdout: string, stderr: string }

export async function run (file: string, args: string[], options: { cwd: string, env: NodeJS.ProcessEnv, timeout?: number }): Promise<Run> {
  return await new Promise(resolve => {
    execFile(file, args, { cwd: options.cwd, env: options.env, timeout: options.timeout ?? 300_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1
      resolve({ code, stdout, stderr })
    })
  })
}

export interface InstalledPackage {
  /** The pinned Node binary. */
  node: string
  /** The environment every command ran with. */
  env: NodeJS.ProcessEnv
  /** The tarball `npm pack` wrote. */
  tarball: string
  /** The files in the tarball, as `npm pack --json` lists them. */
  files: string[]
  /** The project the tarball was installed into. */
  app: string
  /** `<app>/node_modules/.bin/atmirror` */
  bin: string
  /** Seconds spent in `npm pack` (the build included) and in `npm install`. */
  seconds: { pack: number, install: number }
}

/** Packs the repository into `dir` and installs the tarball into `dir/app`. */
export async function packAndInstall (dir: string): Promise<InstalledPackage> {
  const node = await realpath(join(root, 'node_modules', '.bin', 'node'))
  const env: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([key]) => !/^npm_/i.test(key)))
  env.PATH = `${dirname(node)}:${process.env.PATH ?? ''}`
  env.DEBUG = ''

  let start = performance.now()
  const pack = await run('npm', ['pack', '--json', '--pack-destination', dir], { cwd: root, env })
  if (pack.code !== 0) throw new Error(`npm pack failed (exit ${pack.code}):\n${pack.stderr}`)
  const packSeconds = (performance.now() - start) / 1000
  // the prepack script's output precedes the JSON on stdout
  const [info] = JSON.parse(pack.stdout.startsWith('[') ? pack.stdout : pack.stdout.slice(pack.stdout.indexOf('\n[') + 1))
  const tarball = join(dir, info.filename)

  const app = join(dir, 'app')
  await mkdir(app, { recursive: true })
  await writeFile(join(app, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }))
  start = performance.now()
  const install = await run('npm', ['install', tarball, '--omit=dev', '--prefer-offline', '--no-audit', '--no-fund'], { cwd: app, env })
  if (install.code !== 0) throw new Error(`npm install of the tarball failed (exit ${install.code}):\n${install.stderr}`)
  return {
    node,
    env,
    tarball,
    files: info.files.map((file: { path: string }) => file.path),
    app,
    bin: join(app, 'node_modules', '.bin', 'atmirror'),
    seconds: { pack: packSeconds, install: (performance.now() - start) / 1000 }
  }
}

/**
 * What a source file imports, read with TypeScript's own parser (so comments and
 * strings do not count), for the tests that check who may import whom.
 */
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import ts from 'typescript'

/** Every `.ts` file under `dir`, recursively. */
export async function sourceFiles (dir: string): Promise<string[]> {
  const out: string[] = []
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) out.push(...await sourceFiles(path))
    else if (entry.name.endsWith('.ts')) out.push(path)
  }
  return out
}

/** Every relative module specifier a file imports or re-exports (type-only ones too: they still couple the layers). */
export function relativeImports (file: string, text: string): string[] {
  return moduleSpecifiers(file, text).filter(spec => spec.startsWith('.'))
}

/** Every module specifier a file imports or re-exports, statically or with `import()`, type-only ones too. */
export function moduleSpecifiers (file: string, text: string): string[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, false, ts.ScriptKind.TS)
  const out: string[] = []
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier !== undefined && ts.isStringLiteral(node.moduleSpecifier)) {
      out.push(node.moduleSpecifier.text)
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword && node.arguments.length > 0 && ts.isStringLiteral(node.arguments[0])) {
      out.push(node.arguments[0].text)
    }
    ts.forEachChild(node, visit)
  }
  visit(sf)
  return out
}

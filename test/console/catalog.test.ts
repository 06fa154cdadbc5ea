/**
 * Issue 15: the console's one message catalog holds every label in English, Japanese and Simplified
 * Chinese, with the same placeholders in each; translate fills them and falls back to English.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CATALOG, LANGS, translate } from '../../web/src/i18n.ts';

test('every catalog entry is filled in en, ja and zh with the same placeholders', () => {
  assert.deepEqual(Object.keys(LANGS), ['en', 'ja', 'zh']);
  const same: string[] = [];
  for (const [key, entry] of Object.entries(CATALOG)) {
    assert.equal(entry.length, 3, key);
    for (const s of entry) assert.ok(s.trim().length > 0, `${key} is empty in a language`);
    const holes = (s: string) => [...s.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();
    assert.deepEqual(holes(entry[1]), holes(entry[0]), `${key}: ja placeholders`);
    assert.deepEqual(holes(entry[2]), holes(entry[0]), `${key}: zh placeholders`);
    if (entry[1] === entry[0] || entry[2] === entry[0]) same.push(key);
  }
  // Only names that are the same in every language (CBT, vApp) stay untranslated.
  assert.deepEqual(same.sort(), ['inv.cbt', 'inv.vApp']);
  assert.equal(translate('ja', 'nav.jobs'), 'ジョブ');
  assert.equal(translate('zh', 'action.done', { ok: 2, n: 3 }), '完成：3 个成员中的 2 个');
  assert.equal(translate('en', 'wg.confirmTitle', { action: 'Sync now', n: 3 }), 'Confirm “Sync now” for 3 members');
});

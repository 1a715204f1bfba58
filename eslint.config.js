// ESLint flat config: type-checked rules that catch the bugs async event code is prone to
// (floating promises, non-exhaustive switches over event unions).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['**/.*', '**/.*/**', '**/*.mjs', 'test/chaos/tmp-debug/**', 'node_modules/**', 'data/**', 'coverage/**', '.tap/**', 'bin/**', 'eslint.config.js', 'services/api/admin-ui/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
    },
  },
  {
    // tap tracks its own subtests: `t.test(...)` needs no await at top level.
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: {
      '@typescript-eslint/no-floating-promises': 'off',
      // Tests and benchmarks build hostile inputs (control characters) and poll loops on purpose.
      'no-control-regex': 'off',
      'no-useless-assignment': 'off',
    },
  },
);

// Lint rules for Rewind: type-aware checks for the promise and switch mistakes that lose data, no
// swallowed errors, imports only through a module's index, and node:fs only where files are owned.
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import tseslint from 'typescript-eslint';

/** Modules outside these may not touch node:fs directly (they go through platform/ or an owner). */
const FS_OWNERS = [
  'src/platform/**',
  'src/log/**',
  'src/agent/**',
  'src/manager/**',
  'src/views/**',
  'src/runtime/**',
  'src/cli/**',
  // The archive's directory backend and its key file.
  'src/archive/dir-store.ts',
  'src/archive/key-file.ts',
];

export default tseslint.config(
  {
    ignores: ['dist/**', 'node_modules/**', 'bin/**', 'scripts/**', '.tmp/**', 'eslint.config.js'],
  },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          allowForKnownSafeCalls: [
            { from: 'package', package: 'node:test', name: ['test', 'it', 'describe', 'suite'] },
          ],
        },
      ],
      // fastify handlers and interface implementations are async without awaiting anything.
      '@typescript-eslint/require-await': 'off',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': [
        'error',
        { considerDefaultExhaustiveForUnions: true },
      ],
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingUnknown: true }],
      'no-empty': ['error', { allowEmptyCatch: false }],
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_' },
      ],
    },
  },
  {
    // Tests and tools print child-process output (Buffers) into their messages.
    files: ['test/**/*.ts', 'sim/**/*.ts', 'bench/**/*.ts'],
    rules: { '@typescript-eslint/restrict-template-expressions': 'off' },
  },
  {
    files: ['src/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              regex: '^\\.\\./[a-z-]+/(?!index\\.js$).+',
              message: 'import another module through its index.js, not its files',
            },
          ],
        },
      ],
    },
  },
  {
    files: ['src/**/*.ts'],
    ignores: FS_OWNERS,
    rules: {
      'no-restricted-imports': [
        'error',
        {
          paths: [
            {
              name: 'node:fs',
              message: 'file I/O belongs to platform/ or the module that owns the file',
            },
            {
              name: 'node:fs/promises',
              message: 'file I/O belongs to platform/ or the module that owns the file',
            },
          ],
          patterns: [
            {
              regex: '^\\.\\./[a-z-]+/(?!index\\.js$).+',
              message: 'import another module through its index.js, not its files',
            },
          ],
        },
      ],
    },
  },
  prettier,
);

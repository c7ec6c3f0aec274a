using System.Globalization;
using ComposerSharp.Data;
using ComposerSharp.Models;

namespace ComposerSharp.Inference;

/// <summary>
/// The tokenizers a <see cref="ModelDescription"/> can name, and how a description records one: <c>gpt2</c> (built in,
/// <see cref="Gpt2Tokenizer"/>) by name and vocabulary size; <c>bert_wordpiece</c> (<see cref="BertWordPieceTokenizer"/>)
/// with its vocab.txt and tokenizer_config.json and the vocabulary's SHA-256, so the checkpoint alone can read text.
/// </summary>
public static class Tokenizers
{
    /// <summary>The name of ComposerSharp's GPT-2 BPE tokenizer (<see cref="Gpt2Tokenizer"/>).</summary>
    public const string Gpt2 = "gpt2";

    /// <summary>The name of the BERT WordPiece tokenizer (<see cref="BertWordPieceTokenizer"/>).</summary>
    public const string BertWordPiece = BertWordPieceTokenizer.Name;

    /// <summary>The name recorded for <paramref name="tokenizer"/>.</summary>
    public static string NameOf(ITextTokenizer tokenizer) => tokenizer switch
    {
        Gpt2Tokenizer => Gpt2,
        BertWordPieceTokenizer => BertWordPiece,
        _ => tokenizer.GetType().FullName ?? tokenizer.GetType().Name,
    };

    /// <summary><paramref name="description"/> recording <paramref name="tokenizer"/> (name, ordinary-token count, and for WordPiece its files and SHA-256); null clears the tokenizer fields.</summary>
    public static ModelDescription WithTokenizer(this ModelDescription description, ITextTokenizer? tokenizer)
    {
        ArgumentNullException.ThrowIfNull(description);
        var wordPiece = tokenizer as BertWordPieceTokenizer;
        return description with
        {
            Tokenizer = tokenizer is null ? null : NameOf(tokenizer),
            TokenizerRegularCount = tokenizer?.Vocabulary.RegularCount ?? description.TokenizerRegularCount,
            TokenizerSha256 = wordPiece?.VocabSha256,
            TokenizerFiles = wordPiece?.Files,
        };
    }

    /// <summary>
    /// A tokenizer by name or path, as the CLI's <c>tokenizer</c> key and <c>--tokenizer</c> option take it: <c>gpt2</c>,
    /// or a Hugging Face BERT folder (vocab.txt, optional tokenizer_config.json) or vocab.txt file.
    /// </summary>
    /// <exception cref="FileNotFoundException">Neither <c>gpt2</c> nor an existing vocab.txt or folder holding one; the message names the value.</exception>
    /// <exception cref="InvalidDataException">A bad vocabulary or tokenizer_config.json.</exception>
    public static ITextTokenizer FromSpec(string spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        if (spec == Gpt2)
        {
            return new Gpt2Tokenizer();
        }

        if (!File.Exists(spec) && !BertWordPieceTokenizer.IsBertFolder(spec))
        {
            throw new FileNotFoundException(
                $"Tokenizer '{spec}' is neither '{Gpt2}' nor a WordPiece {BertWordPieceTokenizer.VocabFileName} or a folder holding one (full path '{Path.GetFullPath(spec)}').", spec);
        }

        return BertWordPieceTokenizer.Load(spec);
    }

    /// <summary>The tokenizer <paramref name="description"/> names, checked against the recorded vocabulary.</summary>
    /// <exception cref="InvalidDataException">No tokenizer recorded (trained on token ids), an unknown tokenizer, WordPiece files missing or not matching their recorded SHA-256, or a vocabulary of another size than recorded.</exception>
    public static ITextTokenizer Create(ModelDescription description)
    {
        ArgumentNullException.ThrowIfNull(description);
        string name = description.Tokenizer ?? throw new InvalidDataException(
            $"The {description.Kind} model was trained on token ids without a text tokenizer (e.g. a synthetic dataset of {description.TokenizerRegularCount?.ToString(CultureInfo.InvariantCulture) ?? "unknown"} regular ids), so it cannot read text; "
            + "pass a tokenizer (CLI: --tokenizer gpt2 or --tokenizer FOLDER_WITH_VOCAB_TXT; API: CheckpointModel.Load's tokenizer argument).");
        ITextTokenizer tokenizer = name switch
        {
            Gpt2 => new Gpt2Tokenizer(),
            BertWordPiece => BertWordPieceTokenizer.FromFiles(
                description.TokenizerFiles ?? throw new InvalidDataException($"The model description names tokenizer '{name}' but records none of its files."), "The model description"),
            _ => throw new InvalidDataException($"The model was trained with tokenizer '{name}', which is not built in; pass that tokenizer explicitly (API: the tokenizer argument)."),
        };
        if (tokenizer is BertWordPieceTokenizer wordPiece && description.TokenizerSha256 is { } sha && sha != wordPiece.VocabSha256)
        {
            throw new InvalidDataException($"The recorded {BertWordPieceTokenizer.VocabFileName} has SHA-256 {wordPiece.VocabSha256}, not the recorded {sha}: the description is damaged.");
        }

        Check(description, tokenizer);
        return tokenizer;
    }

    /// <summary>Checks that <paramref name="tokenizer"/> fits the model of <paramref name="description"/>: its ids fit the embedding, and its vocabulary is the recorded one when a tokenizer is recorded.</summary>
    /// <exception cref="InvalidDataException">More ids than the model's vocab_size, or another ordinary-token count or vocabulary SHA-256 than the recorded tokenizer's; the message names both values.</exception>
    public static void Check(ModelDescription description, ITextTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(description);
        ArgumentNullException.ThrowIfNull(tokenizer);
        string name = NameOf(tokenizer);
        if (tokenizer.Vocabulary.Size > description.Config.VocabSize)
        {
            throw new InvalidDataException($"Tokenizer '{name}' has {tokenizer.Vocabulary.Size} ids, more than the model's vocab_size {description.Config.VocabSize}.");
        }

        // A model trained on token ids alone (synthetic data) records their count but no tokenizer: any tokenizer whose ids fit may read text for it.
        if (description.Tokenizer is { } recorded && description.TokenizerRegularCount is { } count && count != tokenizer.Vocabulary.RegularCount)
        {
            throw new InvalidDataException($"The model's tokenizer '{recorded}' had {count} regular tokens; tokenizer '{name}' has {tokenizer.Vocabulary.RegularCount}.");
        }

        if (description.TokenizerSha256 is { } sha && tokenizer is BertWordPieceTokenizer w && w.VocabSha256 != sha)
        {
            throw new InvalidDataException($"The model was trained with a {BertWordPieceTokenizer.VocabFileName} of SHA-256 {sha}; this one's is {w.VocabSha256}.");
        }
    }
}

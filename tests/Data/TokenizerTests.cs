using ComposerSharp.Data;
using NUnit.Framework;

namespace ComposerSharp.Tests.Data;

[TestFixture]
public class TokenizerTests
{
    private static readonly Gpt2Tokenizer Tokenizer = new();

    [TestCase("Hello world")]
    [TestCase("Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my purse,")]
    [TestCase("  leading and trailing spaces, tabs\tand\nnew lines\r\n")]
    [TestCase("Ünïcödé, 日本語のテキスト, emoji 🐋🐳 and symbols ∑∫√")]
    [TestCase("")]
    public void DecodeInvertsEncode(string text)
    {
        int[] ids = Tokenizer.Encode(text);
        Assert.That(ids, Has.All.InRange(0, TokenVocabulary.Gpt2.RegularCount - 1));
        Assert.That(Tokenizer.Decode(ids), Is.EqualTo(text));
    }

    [Test]
    public void IdsAreGpt2s()
    {
        // GPT-2's published encoding of "Hello world" and its end-of-text id.
        Assert.That(Tokenizer.Encode("Hello world"), Is.EqualTo(new[] { 15496, 995 }));
        Assert.That(Tokenizer.Vocabulary.EndOfTextId, Is.EqualTo(50256));
        Assert.That(Tokenizer.Decode(new[] { 50256 }), Is.EqualTo("<|endoftext|>"));
        Assert.That(Tokenizer.Decode(new[] { Tokenizer.Vocabulary.MaskId }), Is.EqualTo("<|mask|>"));
        Assert.That(Tokenizer.Vocabulary.Size, Is.EqualTo(50260));
    }

    [Test]
    public void TokenLimitKeepsTheFirstTokens()
    {
        const string text = "The whale, the whale, the white whale swam away from the ship.";
        int[] all = Tokenizer.Encode(text);
        Assert.That(Tokenizer.Encode(text, 5), Is.EqualTo(all.Take(5).ToArray()));
        Assert.Throws<ArgumentOutOfRangeException>(() => Tokenizer.Encode(text, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => Tokenizer.Decode(new[] { 50260 }));
    }
}
